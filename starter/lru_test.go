package starter

import "testing"

func TestLRUForgetsTheLeastRecentlyUsed(t *testing.T) {
	l := newLRU(2)
	l.put("a", "1")
	l.put("b", "2")
	if v, ok := l.get("a"); !ok || v != "1" {
		t.Fatalf("a = %q, %v; want 1", v, ok)
	}
	l.put("c", "3") // b is the least recently used now
	if _, ok := l.get("b"); ok {
		t.Fatal("b still remembered past the bound")
	}
	for k, want := range map[string]string{"a": "1", "c": "3"} {
		if v, ok := l.get(k); !ok || v != want {
			t.Fatalf("%s = %q, %v; want %s", k, v, ok, want)
		}
	}
	l.put("a", "4")
	if v, _ := l.get("a"); v != "4" {
		t.Fatalf("a = %q after overwrite; want 4", v)
	}
	if len(l.index) != 2 || l.order.Len() != 2 {
		t.Fatalf("%d indexed, %d ordered; want 2", len(l.index), l.order.Len())
	}
}
