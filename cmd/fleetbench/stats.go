package main

import (
	"bufio"
	"cmp"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// latencies are one measure's samples; the zero value is empty.
type latencies []time.Duration

// pct is the p-th percentile (nearest rank).
func (l latencies) pct(p float64) time.Duration { return percentile(l, p) }

// percentile is the p-th percentile of samples (nearest rank), the zero value when there are none.
func percentile[T cmp.Ordered](samples []T, p float64) T {
	if len(samples) == 0 {
		var zero T
		return zero
	}
	s := slices.Sorted(slices.Values(samples))
	i := int(math.Ceil(float64(len(s))*p/100)) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// summary is "p50 / p95 / p99 / max" in milliseconds.
func (l latencies) summary() string {
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64) }
	return fmt.Sprintf("%s / %s / %s / %s", ms(l.pct(50)), ms(l.pct(95)), ms(l.pct(99)), ms(l.pct(100)))
}

// memory is a process's resident set, now and at its peak (VmRSS, VmHWM), in KiB.
type memory struct{ rss, peak int64 }

// readMemory reads /proc/<pid>/status.
func readMemory(pid int) (memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	defer f.Close()
	var m memory
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		kib, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			m.rss = kib
		case "VmHWM":
			m.peak = kib
		}
	}
	return m, sc.Err()
}

// childNamed finds this process's child whose command is name (the dev server, which the SDK starts without
// telling its PID).
func childNamed(name string) (int, error) {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis.
		open, closing := strings.IndexByte(string(b), '('), strings.LastIndexByte(string(b), ')')
		if open < 0 || closing < open {
			continue
		}
		fields := strings.Fields(string(b[closing+1:]))
		if len(fields) < 2 || string(b[open+1:closing]) != name || fields[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		return strconv.Atoi(strings.TrimSpace(string(b[:open])))
	}
	return 0, fmt.Errorf("no child process %q", name)
}

// cpuSeconds is the CPU time (user + system) a process has used so far, from /proc/<pid>/stat.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	closing := strings.LastIndexByte(string(b), ')')
	if closing < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command", pid)
	}
	// After the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime.
	fields := strings.Fields(string(b[closing+1:]))
	if len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fields))
	}
	utime, err1 := strconv.ParseFloat(fields[11], 64)
	stime, err2 := strconv.ParseFloat(fields[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return (utime + stime) / clockTicks, nil
}

// clockTicks is USER_HZ, 100 on every Linux this runs on.
const clockTicks = 100
