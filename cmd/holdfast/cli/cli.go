// Package cli is the `holdfast` command line for people and scripts: snapshot, backup, restore, delete,
// abort, status, list and watch, with human output and a live progress bar, or --json for scripts, and exit
// codes that tell a request the API rejected (a guard rail) from an operation that failed.
//
// It talks only to the HTTP API of docs/api.md, with the caller's token, and must never reach
// Temporal, the workers or the volumes directly: a CLI that bypassed the API could bypass its auth, its owner
// scoping and its guard rails. It never decides a guard rail itself either; it shows the API's verdict.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter/api/apiv1"
)

// Exit codes, part of the CLI's contract with scripts.
const (
	ExitOK       = 0 // success
	ExitError    = 1 // anything else: API unreachable, 5xx, unexpected answer, interrupted
	ExitUsage    = 2 // bad command line; nothing was sent
	ExitRejected = 3 // the API refused the request (any 4xx: a guard rail, NotFound, InvalidArgument, …)
	ExitFailed   = 4 // the operation ran and failed, or was aborted (seen by watch or --wait)
)

// DefaultAPI is where `holdfast dev` serves the API.
const DefaultAPI = "http://127.0.0.1:8080"

// pollInterval is how often watch asks for an operation's state; a variable so tests run fast.
var pollInterval = 500 * time.Millisecond

// command is one subcommand: its synopsis (for usage), the flags it takes beyond the common ones, and what
// it does once the command line has been checked.
type command struct {
	name     string
	synopsis []string // usage lines after "holdfast "
	summary  string
	mutating bool // starts an operation, so takes --wait
	minArgs  int
	maxArgs  int // -1: no limit
	flags    func(fs *flag.FlagSet, o *options)
	run      func(ctx context.Context, inv *invocation, args []string) error
}

var commands = []*command{
	{
		name: "snapshot", synopsis: []string{"snapshot VOLUME [--name N]"}, summary: "take a snapshot of VOLUME",
		mutating: true, minArgs: 1, maxArgs: 1, flags: nameFlag, run: runSnapshot,
	},
	{
		name: "backup", synopsis: []string{"backup VOLUME [--name N]"},
		summary:  "back VOLUME up to its hypervisor's backup storage",
		mutating: true, minArgs: 1, maxArgs: 1, flags: nameFlag, run: runBackup,
	},
	{
		name: "restore",
		synopsis: []string{
			"restore VOLUME (--snapshot ID | --backup ID | --latest-backup) --in-place --confirm VOLUME_NAME",
			"restore VOLUME (--snapshot ID | --backup ID | --latest-backup) --new-volume NEW_ID [--new-name N] [--plan P] [--hypervisor H] [--path P | --pool P] [--instant]",
		},
		summary: "restore over VOLUME (confirm with its name), or into a new volume NEW_ID beside it\n" +
			"(named NEW_ID unless --new-name; plan and hypervisor default to the source's);\n" +
			"--latest-backup is VOLUME's newest available backup; --instant makes the new volume\n" +
			"usable at once from a backup, hydrating behind",
		mutating: true, minArgs: 1, maxArgs: 1, flags: restoreFlags, run: runRestore,
	},
	{
		name: "delete", synopsis: []string{"delete VOLUME (--snapshot ID | --backup ID) --confirm ITEM_NAME"},
		summary:  "delete a snapshot or backup of VOLUME (confirm with the item's name)",
		mutating: true, minArgs: 1, maxArgs: 1, flags: deleteFlags, run: runDelete,
	},
	{
		name: "abort", synopsis: []string{"abort VOLUME"},
		summary:  "abort VOLUME's active operation (with --wait: until it has stopped; exit 0 however it ended)",
		mutating: true, minArgs: 1, maxArgs: 1, run: runAbort,
	},
	{
		name: "status", synopsis: []string{"status VOLUME"},
		summary: "VOLUME's state: active operation and progress, cooldown, snapshots and backups",
		minArgs: 1, maxArgs: 1, run: runStatus,
	},
	{
		name: "list", synopsis: []string{"list VOLUME..."},
		summary: "one line per snapshot and backup of each VOLUME (the API has no list-all endpoint;\n" +
			"--json prints a JSON array of the volumes' GET documents)",
		minArgs: 1, maxArgs: -1, run: runList,
	},
	{
		name: "watch", synopsis: []string{"watch OPERATION_ID"},
		summary: "follow an operation to its end with a progress bar (phase, %, MB/s, ETA)",
		minArgs: 1, maxArgs: 1, run: runWatch,
	},
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// IsCommand reports whether name is a subcommand this package runs, so that cmd/holdfast can dispatch
// snapshot|backup|restore|delete|abort|status|list|watch here and keep its own (worker, agent, api, dev).
func IsCommand(name string) bool { return lookup(name) != nil }

// options holds every flag any command takes; each command registers only its own.
type options struct {
	api, token string
	json, wait bool

	name                 string
	snapshotID, backupID string
	latestBackup         bool
	confirm              string
	inPlace, instant     bool
	newVolume, newName   string
	plan, hypervisor     string
	path, pool           string
}

func nameFlag(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.name, "name", "", "a `NAME` for the new item (the API picks one if empty)")
}

func itemFlags(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.snapshotID, "snapshot", "", "`ID` of the snapshot")
	fs.StringVar(&o.backupID, "backup", "", "`ID` of the backup")
}

func restoreFlags(fs *flag.FlagSet, o *options) {
	itemFlags(fs, o)
	fs.BoolVar(&o.latestBackup, "latest-backup", false, "restore VOLUME's newest available backup")
	fs.BoolVar(&o.inPlace, "in-place", false, "overwrite VOLUME itself (needs --confirm with the volume's name)")
	fs.StringVar(&o.confirm, "confirm", "", "the volume's `NAME`, retyped, for --in-place")
	fs.StringVar(&o.newVolume, "new-volume", "", "restore into a new volume with this `ID`")
	fs.StringVar(&o.newName, "new-name", "", "`NAME` of the new volume (default: its ID)")
	fs.StringVar(&o.plan, "plan", "", "`PLAN` of the new volume (default: the source's)")
	fs.StringVar(&o.hypervisor, "hypervisor", "", "`HYPERVISOR` of the new volume (default: the source's)")
	fs.StringVar(&o.path, "path", "", "put the new volume at this file `PATH` on its hypervisor (default: beside the source)")
	fs.StringVar(&o.pool, "pool", "", "put the new volume in this Ceph `POOL` (image: the new volume's ID)")
	fs.BoolVar(&o.instant, "instant", false, "with a backup and --new-volume: the new volume is usable at once, and hydrates behind")
}

func deleteFlags(fs *flag.FlagSet, o *options) {
	itemFlags(fs, o)
	fs.StringVar(&o.confirm, "confirm", "", "the snapshot's or backup's `NAME`, retyped")
}

// invocation is one run of one command: where output goes, how to reach the API, and the parsed flags.
type invocation struct {
	cmd            string
	stdout, stderr io.Writer
	env            func(string) string
	api            *apiClient
	opts           options
}

// usageError is a bad command line: exit 2, nothing sent to the API.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{msg: fmt.Sprintf(format, args...)} }

// operationEndedError is an operation that ran and did not succeed (exit 4).
type operationEndedError struct{ op *apiv1.Operation }

func (e *operationEndedError) Error() string {
	s := fmt.Sprintf("operation %s (%s of %s) %s", e.op.OperationID, e.op.Kind, e.op.VolumeID, e.op.Status)
	if t := errorText(e.op); t != "" {
		s += ": " + t
	}
	return s
}

// Run runs one CLI command. args are the words after the binary name (["snapshot", "vol1", "--name", "x"]);
// env looks up environment variables (nil: the process environment). It returns the exit code (Exit*).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) string) int {
	if env == nil {
		env = os.Getenv
	}
	if len(args) == 0 {
		Usage(stderr)
		return ExitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			if c := lookup(args[1]); c != nil {
				c.usage(stdout)
				return ExitOK
			}
			fmt.Fprintf(stderr, "error: unknown command %q\n", args[1])
			return ExitUsage
		}
		Usage(stdout)
		return ExitOK
	}
	c := lookup(args[0])
	if c == nil {
		fmt.Fprintf(stderr, "error: unknown command %q (run 'holdfast help' for the list)\n", args[0])
		return ExitUsage
	}

	inv := &invocation{cmd: c.name, stdout: stdout, stderr: stderr, env: env}
	positional, err := c.parse(args[1:], &inv.opts)
	if errors.Is(err, flag.ErrHelp) {
		c.usage(stdout)
		return ExitOK
	}
	if err == nil {
		inv.api, err = newAPIClient(inv.opts, env)
	}
	if err == nil {
		err = c.run(ctx, inv, positional)
	}
	return inv.report(c, err)
}

// report prints err the one way every command does and maps it to the exit code.
func (inv *invocation) report(c *command, err error) int {
	if err == nil {
		return ExitOK
	}
	var (
		usage *usageError
		api   *apiError
		ended *operationEndedError
		down  *unreachableError
	)
	switch {
	case errors.As(err, &usage):
		fmt.Fprintf(inv.stderr, "error: %s\nusage:\n", usage.msg)
		for _, s := range c.synopsis {
			fmt.Fprintf(inv.stderr, "  holdfast %s\n", s)
		}
		fmt.Fprintf(inv.stderr, "Run 'holdfast help %s' for its flags.\n", c.name)
		return ExitUsage
	case errors.As(err, &api):
		// A script asked for JSON: give it the API's own error document too, so stdout always holds
		// exactly one document whenever the API answered.
		if inv.opts.json && len(api.Body) > 0 {
			writeJSON(inv.stdout, api.Body)
		}
		fmt.Fprintf(inv.stderr, "error: %s\n", api)
		if api.Status == http.StatusUnauthorized {
			fmt.Fprintln(inv.stderr, "hint: pass --token or set HOLDFAST_TOKEN")
		}
		if api.rejected() {
			return ExitRejected
		}
		return ExitError
	case errors.As(err, &ended):
		fmt.Fprintf(inv.stderr, "error: %s\n", ended)
		return ExitFailed
	case errors.As(err, &down):
		fmt.Fprintf(inv.stderr, "error: %s\n", down)
		return ExitError
	default:
		fmt.Fprintf(inv.stderr, "error: %v\n", err)
		return ExitError
	}
}

// parse reads the command's flags wherever they appear among its arguments (people type
// `holdfast snapshot vol1 --name x` as often as `--name x vol1`), and checks the argument count.
func (c *command) parse(args []string, o *options) ([]string, error) {
	fs := c.flagSet(o)
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, &usageError{msg: err.Error()}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		// flag stops at "--" after consuming it: everything after it is an argument, even "-x".
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			positional = append(positional, rest...)
			break
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
	if len(positional) < c.minArgs {
		return nil, usagef("%s: missing %s", c.name, c.argNames()[len(positional)])
	}
	if c.maxArgs >= 0 && len(positional) > c.maxArgs {
		return nil, usagef("%s: unexpected argument %q", c.name, positional[c.maxArgs])
	}
	return positional, nil
}

func (c *command) argNames() []string {
	if c.name == "watch" {
		return []string{"OPERATION_ID"}
	}
	return []string{"VOLUME"}
}

func (c *command) flagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors and help are printed by Run, in one format
	fs.StringVar(&o.api, "api", "", "API base `URL` (env HOLDFAST_API, default "+DefaultAPI+")")
	fs.StringVar(&o.token, "token", "", "bearer `TOKEN` (env HOLDFAST_TOKEN, which keeps it out of ps)")
	fs.BoolVar(&o.json, "json", false, "print the API's JSON response as one document, nothing else on stdout")
	if c.mutating {
		fs.BoolVar(&o.wait, "wait", false, "watch the operation until it ends (with --json: print its final state)")
	}
	if c.flags != nil {
		c.flags(fs, o)
	}
	return fs
}

func newAPIClient(o options, env func(string) string) (*apiClient, error) {
	base := o.api
	if base == "" {
		base = env("HOLDFAST_API")
	}
	if base == "" {
		base = DefaultAPI
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usagef("--api %q: want an http:// or https:// URL such as %s", base, DefaultAPI)
	}
	token := o.token
	if token == "" {
		token = env("HOLDFAST_TOKEN")
	}
	return &apiClient{
		base:  strings.TrimRight(base, "/"),
		token: token,
		http:  &http.Client{},
	}, nil
}

// checkID turns a malformed ID into a usage error naming the flag or argument it came from. Checking the
// API's ID rule (activities.IDPattern) here keeps a typo such as "vol/../x" from ever becoming a different
// request path, and turns it into a usage error instead of a confusing 404.
func checkID(what, id string) error {
	if !activities.ValidID(id) {
		return usagef("%s %q is not a valid ID (letters, digits, '.', '_', '-'; at most 128)", what, id)
	}
	return nil
}

// Usage writes the CLI's help: commands, flags, environment and exit codes.
func Usage(w io.Writer) {
	var b strings.Builder
	b.WriteString(`holdfast: snapshots, backups and restores of block volumes, through the Holdfast HTTP API.

Usage:
  holdfast COMMAND ARGUMENTS [FLAGS]    (flags may come before or after the arguments)

Commands:
`)
	for _, c := range commands {
		for _, s := range c.synopsis {
			fmt.Fprintf(&b, "  holdfast %s\n", s)
		}
		for _, line := range strings.Split(c.summary, "\n") {
			fmt.Fprintf(&b, "      %s\n", line)
		}
	}
	b.WriteString(`  holdfast help [COMMAND]

Flags of every command:
  --api URL      API base URL (default $HOLDFAST_API, else ` + DefaultAPI + `)
  --token TOKEN  bearer token (default $HOLDFAST_TOKEN; prefer the variable, flags show up in ps)
  --json         print the API's JSON response as one document and nothing else on stdout (also for
                 API errors; messages still go to stderr)
  -h, --help     help for the command
Flags of snapshot, backup, restore, delete, abort:
  --wait         watch the started operation until it ends, as 'watch' does; with --json, print the
                 operation's final state instead of the 202 answer

Environment:
  HOLDFAST_API    API base URL
  HOLDFAST_TOKEN  bearer token (a panel token, or an owner token that sees only its volumes)

watch polls every 500ms; on a terminal it redraws one progress line, otherwise it writes a plain line at
most once per second. Interrupting watch or --wait leaves the operation running.

Exit codes:
  0  success
  1  other errors: API unreachable, server error (5xx), unexpected answer, interrupted
  2  usage error (nothing was sent)
  3  rejected by the API: a guard rail or any other 4xx (VolumeBusy, Cooldown, SnapshotLimit,
     BackupLimit, OwnerLimit, AttachedRunning, NoBackupStorage, ConfirmationMismatch, NotFound,
     InvalidArgument, NoActiveOperation, …); printed as "error: <Type>: <message>"
  4  the operation failed or was aborted (seen by watch or --wait)
`)
	io.WriteString(w, b.String())
}

// usage writes one command's help.
func (c *command) usage(w io.Writer) {
	fmt.Fprintln(w, "Usage:")
	for _, s := range c.synopsis {
		fmt.Fprintf(w, "  holdfast %s\n", s)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, c.summary)
	fmt.Fprintln(w, "\nFlags:")
	var o options
	fs := c.flagSet(&o)
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	slices.Sort(names)
	for _, n := range names {
		f := fs.Lookup(n)
		arg, help := flag.UnquoteUsage(f)
		if arg != "" {
			arg = " " + arg
		}
		fmt.Fprintf(w, "  --%s%s\n      %s\n", n, arg, help)
	}
	fmt.Fprintln(w, "\nExit codes: 0 ok, 1 other error, 2 usage, 3 rejected by the API (4xx), 4 operation failed or aborted.")
}
