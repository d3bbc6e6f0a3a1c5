package metrics

import (
	"log/slog"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.temporal.io/sdk/client"
)

// SDKHandler is a client.MetricsHandler that records into a Prometheus
// registry. Pass it as client.Options.MetricsHandler: workers inherit it from
// their client, and workflows reach it through workflow.GetMetricsHandler,
// which wraps it so nothing is recorded while replaying.
//
// Tags become labels. The SDK emits one name with different tag sets (a
// failure counter gets a failure_reason tag, Nexus metrics get service and
// operation tags...), while a prometheus.*Vec has one fixed label set and the
// registry refuses a second Vec of the same name with other label names. So
// SDKHandler registers one unchecked Collector (it describes nothing) that
// exposes every series exactly as recorded: the exposition format and
// Prometheus' data model identify a series by its whole label set, and the
// registry's Gather accepts differing label names within a family as long
// as the type and help agree, which the adapter guarantees by keying
// families by exposed name and deriving help from the name alone. Padding
// missing labels with "" would be equivalent (an empty label is an absent
// label) but would invent labels the emitter never set.
//
// Counters get the suffix _total once; timers become histograms in seconds
// named with _seconds once; gauges keep their name. Names and label names
// are sanitized to Prometheus' rules. Holdfast's own workflow metrics (see
// OperationStarted and friends) keep exactly their documented labels.
//
// The zero value is not usable; one SDKHandler per registry, since two would
// expose the same series twice and fail the scrape.
type SDKHandler struct {
	c      *collector
	labels []labelPair // sorted by name, no empty values
}

// NewSDKHandler returns a handler recording into reg.
func NewSDKHandler(reg prometheus.Registerer) *SDKHandler {
	c := &collector{families: map[string]*family{}}
	// An unchecked collector cannot collide at registration, so an error here
	// is a broken Registerer, not a runtime condition.
	if err := reg.Register(c); err != nil {
		panic(err)
	}
	return &SDKHandler{c: c}
}

var _ client.MetricsHandler = (*SDKHandler)(nil)

type labelPair struct{ name, value string }

// WithTags returns a handler whose metrics carry h's tags overridden by tags.
// An empty value removes the label: Prometheus treats an empty label as an
// absent one, so keeping it would expose two spellings of one series.
func (h *SDKHandler) WithTags(tags map[string]string) client.MetricsHandler {
	if len(tags) == 0 {
		return h
	}
	merged := make(map[string]string, len(h.labels)+len(tags))
	for _, l := range h.labels {
		merged[l.name] = l.value
	}
	// Sorted so that two keys sanitizing to the same label resolve the same
	// way on every call.
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		merged[sanitizeLabel(k)] = strings.ToValidUTF8(tags[k], "\uFFFD")
	}
	labels := make([]labelPair, 0, len(merged))
	for k, v := range merged {
		if v != "" {
			labels = append(labels, labelPair{k, v})
		}
	}
	slices.SortFunc(labels, func(a, b labelPair) int { return strings.Compare(a.name, b.name) })
	return &SDKHandler{c: h.c, labels: labels}
}

// Counter returns a counter, or for Holdfast's up/down metrics (in-flight
// gauges) an instrument whose Inc adds a possibly negative delta to a gauge.
func (h *SDKHandler) Counter(name string) client.MetricsCounter {
	n := sanitizeName(name)
	if s, ok := specs[n]; ok && s.upDown {
		if ser := h.series(n, kindGauge); ser != nil {
			return gaugeAdder{ser}
		}
		return client.MetricsNopHandler.Counter(name)
	}
	if ser := h.series(counterName(n), kindCounter); ser != nil {
		return counter{ser}
	}
	return client.MetricsNopHandler.Counter(name)
}

// Gauge returns a gauge set to the last recorded value.
func (h *SDKHandler) Gauge(name string) client.MetricsGauge {
	if ser := h.series(sanitizeName(name), kindGauge); ser != nil {
		return gauge{ser}
	}
	return client.MetricsNopHandler.Gauge(name)
}

// Timer returns a histogram of durations in seconds.
func (h *SDKHandler) Timer(name string) client.MetricsTimer {
	if ser := h.series(timerName(sanitizeName(name)), kindHistogram); ser != nil {
		return timer{ser}
	}
	return client.MetricsNopHandler.Timer(name)
}

// series finds or creates the series of name with h's labels, or returns nil
// (after counting the conflict) when name is already a metric of another
// kind: exposing both would make the registry reject the family on every
// scrape.
func (h *SDKHandler) series(name string, k kind) *series {
	f := h.c.family(name, k)
	if f.kind != k {
		h.c.conflict(name, k, f.kind)
		return nil
	}
	return f.series(h.labels)
}

type kind int

const (
	kindCounter kind = iota
	kindGauge
	kindHistogram
)

func (k kind) String() string {
	return [...]string{"counter", "gauge", "histogram"}[k]
}

type collector struct {
	mu       sync.RWMutex
	families map[string]*family
}

type family struct {
	name    string
	help    string
	kind    kind
	spec    *spec // nil for SDK metrics
	buckets []float64

	mu    sync.RWMutex
	byKey map[string]*series
}

type series struct {
	desc *prometheus.Desc
	bits atomic.Uint64 // float64 value of a counter or gauge
	hist *histogram
}

func (c *collector) family(name string, k kind) *family {
	return getOrCreate(&c.mu, c.families, name, func() *family {
		f := &family{
			name:    name,
			help:    "Temporal SDK metric " + name + ".",
			kind:    k,
			buckets: defaultTimerBuckets,
			byKey:   map[string]*series{},
		}
		if s, ok := specs[name]; ok {
			f.spec = &s
			f.help = s.help
			if s.buckets != nil {
				f.buckets = s.buckets
			}
		}
		return f
	})
}

// getOrCreate returns m[key], creating it under the write lock only on first
// use: after warm-up every SDK record is a read-locked map lookup.
func getOrCreate[V any](mu *sync.RWMutex, m map[string]*V, key string, create func() *V) *V {
	mu.RLock()
	v := m[key]
	mu.RUnlock()
	if v != nil {
		return v
	}
	mu.Lock()
	defer mu.Unlock()
	if v = m[key]; v == nil {
		v = create()
		m[key] = v
	}
	return v
}

func (c *collector) conflict(name string, want, have kind) {
	f := c.family(conflictsName, kindCounter)
	s := f.series([]labelPair{{"metric", name}})
	if s.addFloat(1) == 1 {
		// Once per name: the SDK would otherwise log on every task.
		slog.Warn("metrics: dropping Temporal SDK instrument whose name is taken by another type",
			"metric", name, "kind", want.String(), "existing_kind", have.String())
	}
}

func (f *family) series(labels []labelPair) *series {
	if f.spec != nil {
		labels = keepLabels(labels, f.spec.labels)
	}
	var kb strings.Builder
	for _, l := range labels {
		kb.WriteString(l.name)
		kb.WriteByte(0xff) // cannot occur in a label name, nor in valid UTF-8
		kb.WriteString(l.value)
		kb.WriteByte(0xff)
	}
	return getOrCreate(&f.mu, f.byKey, kb.String(), func() *series {
		constLabels := make(prometheus.Labels, len(labels))
		for _, l := range labels {
			constLabels[l.name] = l.value
		}
		s := &series{desc: prometheus.NewDesc(f.name, f.help, nil, constLabels)}
		if f.kind == kindHistogram {
			s.hist = &histogram{upper: f.buckets, counts: make([]uint64, len(f.buckets))}
		}
		return s
	})
}

// keepLabels returns the labels named in allowed, in labels' (sorted) order.
func keepLabels(labels []labelPair, allowed []string) []labelPair {
	kept := make([]labelPair, 0, len(allowed))
	for _, l := range labels {
		if slices.Contains(allowed, l.name) {
			kept = append(kept, l)
		}
	}
	return kept
}

// addFloat adds d and returns the new value.
func (s *series) addFloat(d float64) float64 {
	for {
		old := s.bits.Load()
		v := math.Float64frombits(old) + d
		if s.bits.CompareAndSwap(old, math.Float64bits(v)) {
			return v
		}
	}
}

// addFloatFloor adds d but never takes the value below floor.
func (s *series) addFloatFloor(d, floor float64) float64 {
	for {
		old := s.bits.Load()
		v := max(math.Float64frombits(old)+d, floor)
		if s.bits.CompareAndSwap(old, math.Float64bits(v)) {
			return v
		}
	}
}

func (s *series) value() float64 { return math.Float64frombits(s.bits.Load()) }

type histogram struct {
	upper []float64 // bucket upper bounds, ascending, shared with the family

	mu     sync.Mutex
	counts []uint64 // per bucket, not cumulative
	count  uint64
	sum    float64
}

func (h *histogram) observe(v float64) {
	// The first bound >= v is the bucket v belongs to (le is inclusive).
	i := sort.SearchFloat64s(h.upper, v)
	h.mu.Lock()
	if i < len(h.counts) {
		h.counts[i]++
	}
	h.count++
	h.sum += v
	h.mu.Unlock()
}

func (h *histogram) snapshot() (count uint64, sum float64, buckets map[float64]uint64) {
	buckets = make(map[float64]uint64, len(h.upper))
	h.mu.Lock()
	defer h.mu.Unlock()
	var cum uint64
	for i, le := range h.upper {
		cum += h.counts[i]
		buckets[le] = cum
	}
	return h.count, h.sum, buckets
}

type counter struct{ s *series }

// Inc ignores negative deltas: a Prometheus counter that decreases reads as a
// process restart to rate(), which would invent a burst of events.
func (c counter) Inc(d int64) {
	if d > 0 {
		c.s.addFloat(float64(d))
	}
}

type gaugeAdder struct{ s *series }

// Inc adds d, never below zero: a process that sees an operation end without having seen it start (the
// workflow moved here from another worker, or this worker restarted meanwhile) has nothing to take it from.
func (g gaugeAdder) Inc(d int64) { g.s.addFloatFloor(float64(d), 0) }

type gauge struct{ s *series }

func (g gauge) Update(v float64) { g.s.bits.Store(math.Float64bits(v)) }

type timer struct{ s *series }

func (t timer) Record(d time.Duration) { t.s.hist.observe(d.Seconds()) }

// Describe sends nothing, which makes the collector unchecked: its families
// and label sets are only known once the SDK records them.
func (c *collector) Describe(chan<- *prometheus.Desc) {}

// Collect exposes every series recorded so far.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.RLock()
	families := make([]*family, 0, len(c.families))
	for _, f := range c.families {
		families = append(families, f)
	}
	c.mu.RUnlock()

	for _, f := range families {
		f.mu.RLock()
		all := make([]*series, 0, len(f.byKey))
		for _, s := range f.byKey {
			all = append(all, s)
		}
		f.mu.RUnlock()
		for _, s := range all {
			ch <- f.metric(s)
		}
	}
}

func (f *family) metric(s *series) prometheus.Metric {
	var (
		m   prometheus.Metric
		err error
	)
	switch f.kind {
	case kindCounter:
		m, err = prometheus.NewConstMetric(s.desc, prometheus.CounterValue, s.value())
	case kindGauge:
		m, err = prometheus.NewConstMetric(s.desc, prometheus.GaugeValue, s.value())
	case kindHistogram:
		count, sum, buckets := s.hist.snapshot()
		m, err = prometheus.NewConstHistogram(s.desc, count, sum, buckets)
	}
	if err != nil {
		// Reported by Gather for this series only; promhttp keeps serving
		// the rest.
		return prometheus.NewInvalidMetric(s.desc, err)
	}
	return m
}
