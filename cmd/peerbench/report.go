package main

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// results holds every sample, by tool, repository kind and step, one per run.
type results struct {
	tools   []string
	samples map[string][]sample // key: tool/kind/step
}

func newResults(tools []tool) *results {
	r := &results{samples: map[string][]sample{}}
	for _, t := range tools {
		r.tools = append(r.tools, t.name())
	}
	return r
}

func resultKey(tool, kind string, step int) string {
	return tool + "/" + kind + "/" + strconv.Itoa(step)
}

func (r *results) add(tool, kind string, step int, s sample) {
	k := resultKey(tool, kind, step)
	r.samples[k] = append(r.samples[k], s)
}

// median is the per-field median of a tool's samples of one step (the upper middle one of an even count).
func (r *results) median(tool, kind string, step int) sample {
	ss := r.samples[resultKey(tool, kind, step)]
	mid := func(f func(sample) int64) int64 {
		v := make([]int64, len(ss))
		for i, s := range ss {
			v[i] = f(s)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return sample{
		wall:  time.Duration(mid(func(s sample) int64 { return int64(s.wall) })),
		added: mid(func(s sample) int64 { return s.added }),
		rss:   mid(func(s sample) int64 { return s.rss }),
	}
}

// print writes the table: per repository kind and step, each tool's medians, then Holdfast against the
// best peer on each measure (time as "x faster": best peer's time ÷ Holdfast's; bytes and RSS as
// Holdfast's ÷ best peer's, lower is better).
func (r *results) print(w io.Writer, cfg config, img *image) {
	fmt.Fprintf(w, "\npeer benchmark: %s ext4 image holding %s of files from %s; %d run(s), medians; "+
		"%d scattered 4 KiB writes before step 3; every repository encrypted\n"+
		"every backup reads the whole image (no tool is given a changed-block hint); time and peak RSS are the child process's\n",
		formatMiB(img.size), formatMiB(img.used), strings.Join(cfg.data, ", "), cfg.runs, cfg.writes)
	fmt.Fprintf(w, "%-6s %-26s %-20s %22s %14s %14s\n", "repo", "step", "tool", "time s", "added MiB", "peak RSS MiB")
	for _, kind := range repoKinds {
		for step, stepName := range steps {
			hf := r.median(r.tools[0], kind, step)
			var best sample
			var bestName [3]string
			for i, name := range r.tools {
				m := r.median(name, kind, step)
				fmt.Fprintf(w, "%-6s %-26s %-20s %22.1f %14.1f %14.1f\n", kind, stepName, name,
					m.wall.Seconds(), mib(m.added), mib(m.rss))
				if i == 0 {
					continue
				}
				if i == 1 || m.wall < best.wall {
					best.wall, bestName[0] = m.wall, name
				}
				if i == 1 || m.added < best.added {
					best.added, bestName[1] = m.added, name
				}
				if i == 1 || m.rss < best.rss {
					best.rss, bestName[2] = m.rss, name
				}
			}
			fmt.Fprintf(w, "%-6s %-26s %-20s %22s %14s %14s\n", "", "", "holdfast ÷ best peer",
				ratio(float64(best.wall), float64(hf.wall), "x faster", bestName[0]),
				ratio(float64(hf.added), float64(best.added), "", bestName[1]),
				ratio(float64(hf.rss), float64(best.rss), "", bestName[2]))
		}
	}
}

func ratio(a, b float64, suffix, peer string) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f%s %s", a/b, suffix, peer)
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func formatMiB(n int64) string { return fmt.Sprintf("%.1f MiB", mib(n)) }

// parseSize reads a byte count with an optional KiB, MiB or GiB suffix.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	for suffix, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if v, ok := strings.CutSuffix(s, suffix); ok {
			s, mult = v, m
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n*mult%4096 != 0 {
		return 0, fmt.Errorf("%q is not a positive multiple of 4 KiB", s)
	}
	return n * mult, nil
}
