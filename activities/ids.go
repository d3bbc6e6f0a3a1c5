package activities

import "regexp"

// IDPattern is the one rule every identifier follows: volume, owner, hypervisor, operation, snapshot,
// backup, policy, plan and storage ids alike (api.md). It is the intersection of what every store accepts as
// an object-name component and every driver as a file or image name (no leading dot, no '/', at most 128
// characters), so an id that passes it can never escape a directory or a key prefix. The API, the CLI, the
// config, the workflows' validators and the agent all check it, so that an id refused anywhere is refused
// everywhere.
const IDPattern = `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`

var idRegexp = regexp.MustCompile(IDPattern)

// ValidID reports whether s follows IDPattern.
func ValidID(s string) bool { return idRegexp.MatchString(s) }
