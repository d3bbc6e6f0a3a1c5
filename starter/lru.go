package starter

import (
	"container/list"
	"sync"
)

// lru is a bounded map of strings, safe for concurrent use, that forgets the least recently used entry
// first.
type lru struct {
	mu    sync.Mutex
	max   int
	order *list.List // front: most recent; values are *lruEntry
	index map[string]*list.Element
}

type lruEntry struct{ key, value string }

func newLRU(max int) *lru {
	return &lru{max: max, order: list.New(), index: map[string]*list.Element{}}
}

func (l *lru) get(key string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.index[key]
	if !ok {
		return "", false
	}
	l.order.MoveToFront(e)
	return e.Value.(*lruEntry).value, true
}

func (l *lru) put(key, value string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.index[key]; ok {
		e.Value.(*lruEntry).value = value
		l.order.MoveToFront(e)
		return
	}
	l.index[key] = l.order.PushFront(&lruEntry{key, value})
	if l.order.Len() > l.max {
		oldest := l.order.Back()
		l.order.Remove(oldest)
		delete(l.index, oldest.Value.(*lruEntry).key)
	}
}
