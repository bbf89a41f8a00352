package worker

import "testing"

func TestFetchers(t *testing.T) {
	for _, c := range []struct{ conc, asked, want int }{
		{1, 0, 1}, {24, 0, 1}, {50, 0, 2}, {200, 0, 8}, {1000, 0, 8}, // one per 25 handlers, 1..8
		{50, 5, 5}, {3, 5, 3}, // asked: as asked, never more than the handlers
	} {
		if got := fetchers(c.conc, c.asked); got != c.want {
			t.Errorf("fetchers(%d, %d) = %d, want %d", c.conc, c.asked, got, c.want)
		}
	}
}
