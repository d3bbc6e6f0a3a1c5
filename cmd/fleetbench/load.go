package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/holdfast/holdfast/workflows"
)

// panel is the API as the hosting panel calls it: its token, and a bounded number of requests in flight.
type panel struct {
	url, token string
	http       *http.Client
	inFlight   chan struct{}
}

func newPanel(url, token string, concurrency int) *panel {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = concurrency
	return &panel{url: url, token: token, http: &http.Client{Transport: tr, Timeout: 2 * time.Minute},
		inFlight: make(chan struct{}, concurrency)}
}

// answer is one HTTP call: its status, the error type of a refusal, the Retry-After it named, its body and how
// long it took.
type answer struct {
	status     int
	errType    string
	retryAfter time.Duration
	body       []byte
	took       time.Duration
}

// call sends one request, waiting for a slot among the requests in flight first (the wait is not timed).
func (p *panel) call(ctx context.Context, method, path string, body any) (answer, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return answer{}, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, p.url+path, rd)
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Authorization", "Bearer "+p.token)
	req.Header.Set("Content-Type", "application/json")
	select {
	case p.inFlight <- struct{}{}:
	case <-ctx.Done():
		return answer{}, ctx.Err()
	}
	start := time.Now()
	resp, err := p.http.Do(req)
	if err == nil {
		var a answer
		a.body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		a.took, a.status = time.Since(start), resp.StatusCode
		<-p.inFlight
		if err != nil {
			return answer{}, err
		}
		if s, perr := strconv.Atoi(resp.Header.Get("Retry-After")); perr == nil {
			a.retryAfter = time.Duration(s) * time.Second
		}
		if a.status >= 300 {
			var e struct {
				Error struct{ Type string } `json:"error"`
			}
			_ = json.Unmarshal(a.body, &e)
			a.errType = e.Error.Type
			if a.errType == "" {
				a.errType = strconv.Itoa(a.status)
			}
		}
		return a, nil
	}
	<-p.inFlight
	return answer{}, err
}

// tally counts what a phase's calls met, safely from many goroutines.
type tally struct {
	mu         sync.Mutex
	latency    latencies
	rejections map[string]int // refusals by error type, each call counted
	serverErrs int            // 5xx answers
	gaveUp     map[string]int // requests never accepted, by their last refusal
	failed     map[string]int // accepted operations that did not succeed, by status or error type
	completed  int            // accepted operations that succeeded
	lastEnd    time.Duration  // from the phase's start to the last operation's end
}

func newTally() *tally {
	return &tally{rejections: map[string]int{}, gaveUp: map[string]int{}, failed: map[string]int{}}
}

func (t *tally) record(a answer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.latency = append(t.latency, a.took)
	if a.status >= 500 {
		t.serverErrs++
	}
	if a.status >= 300 {
		t.rejections[a.errType]++
	}
}

// follow waits for an accepted operation to end, and counts it. It waits on the operation's workflow first
// (a long poll, as the baseline waits on its workflows), then reads the operation once through the API for
// its outcome: polling thousands of operations every second through the requests' in-flight budget would
// measure the polling, and starve the requests.
func (t *tally) follow(ctx context.Context, p *panel, c client.Client, operationID string, phaseStart time.Time) {
	_ = c.GetWorkflow(ctx, workflows.OperationWorkflowID(operationID), "").Get(ctx, nil) // its outcome is read below
	finished, ok := waitOperation(ctx, p, t, operationID)
	t.mu.Lock()
	defer t.mu.Unlock()
	if ok {
		t.completed++
	}
	t.lastEnd = max(t.lastEnd, finished.Sub(phaseStart))
}

func (t *tally) count(m map[string]int, key string) {
	t.mu.Lock()
	m[key]++
	t.mu.Unlock()
}

// retryable are the refusals a scheduler client waits out: not now, rather than never.
var retryable = map[string]bool{"OwnerLimit": true, "Cooldown": true, "VolumeBusy": true, "Unavailable": true}

// maxAttempts bounds a scheduler client's tries per volume and night.
const maxAttempts = 40

// burst is one operation kind requested for every volume at once, as a scheduler client sends it.
type burst struct {
	kind       string // snapshots or backups
	accepted   int
	lastAccept time.Duration
	*tally
}

// took is the burst's time, from the first request to the last operation's end.
func (b *burst) took() time.Duration { return b.lastEnd }

// runBurst POSTs /v1/volumes/{id}/<kind> for every volume, retrying refusals that mean "not now" after their
// Retry-After (or 1 s), then polls each accepted operation until it ends. The burst's time runs from the first
// request to the last operation's finished_at (the workflow's clock, on this host), so that polling's
// granularity does not count.
func runBurst(ctx context.Context, p *panel, c client.Client, volumeIDs []string, kind string) *burst {
	b := &burst{kind: kind, tally: newTally()}
	start := time.Now()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, id := range volumeIDs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			opID := requestOperation(ctx, p, b.tally, "/v1/volumes/"+id+"/"+kind)
			if opID == "" {
				return
			}
			mu.Lock()
			b.accepted++
			b.lastAccept = max(b.lastAccept, time.Since(start))
			mu.Unlock()
			b.follow(ctx, p, c, opID, start)
		}()
	}
	wg.Wait()
	return b
}

// requestOperation asks for one operation until it is accepted, refused for good, or out of attempts; it
// returns the operation's ID, or "" if it was never accepted.
func requestOperation(ctx context.Context, p *panel, t *tally, path string) string {
	last := ""
	for range maxAttempts {
		a, err := p.call(ctx, http.MethodPost, path, map[string]string{})
		if err != nil {
			t.count(t.gaveUp, "transport: "+err.Error())
			return ""
		}
		t.record(a)
		if a.status == http.StatusAccepted {
			var op struct {
				OperationID string `json:"operation_id"`
			}
			if err := json.Unmarshal(a.body, &op); err != nil || op.OperationID == "" {
				t.count(t.gaveUp, "bad 202 body")
				return ""
			}
			return op.OperationID
		}
		last = a.errType
		if !retryable[a.errType] {
			break
		}
		wait := a.retryAfter
		if wait <= 0 {
			wait = time.Second
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ""
		}
	}
	t.count(t.gaveUp, last)
	return ""
}

// pollEvery is how often each operation is looked at while it runs.
const pollEvery = time.Second

// waitOperation polls GET /v1/operations/{id} until the operation ends (at once, usually: follow waited for
// its workflow), and returns when it finished and whether it succeeded.
func waitOperation(ctx context.Context, p *panel, t *tally, operationID string) (time.Time, bool) {
	for first := true; ; first = false {
		if !first {
			select {
			case <-time.After(pollEvery):
			case <-ctx.Done():
				return time.Now(), false
			}
		}
		a, err := p.call(ctx, http.MethodGet, "/v1/operations/"+operationID, nil)
		if err != nil || a.status != http.StatusOK {
			continue // a busy API answers later; the phase's deadline bounds this
		}
		var op struct {
			Status     string     `json:"status"`
			FinishedAt *time.Time `json:"finished_at"`
			Error      *struct {
				Type string `json:"type"`
			} `json:"error"`
		}
		if json.Unmarshal(a.body, &op) != nil {
			continue
		}
		switch op.Status {
		case "available", "completed":
			return finishedAt(op.FinishedAt), true
		case "failed", "aborted":
			why := op.Status
			if op.Error != nil {
				why += ": " + op.Error.Type
			}
			t.count(t.failed, why)
			return finishedAt(op.FinishedAt), false
		}
	}
}

func finishedAt(t *time.Time) time.Time {
	if t == nil {
		return time.Now()
	}
	return *t
}

// forEach runs fn for every item with n at a time, and returns the first error.
func forEach[T any](items []T, n int, fn func(T) error) error {
	sem := make(chan struct{}, n)
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	for _, it := range items {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := fn(it); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return first
}
