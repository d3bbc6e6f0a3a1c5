package nbd

// Wire constants of the NBD protocol (doc/proto.md). Every integer on the wire is big-endian.

const (
	magicNBD             = 0x4e42444d41474943 // "NBDMAGIC": the server's greeting
	magicOption          = 0x49484156454f5054 // "IHAVEOPT": newstyle greeting, and every option request
	magicOptionReply     = 0x0003e889045565a9
	magicRequest         = 0x25609513
	magicSimpleReply     = 0x67446698
	magicStructuredReply = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	clientFlagFixedNewstyle = 1 << 0
	clientFlagNoZeroes      = 1 << 1
)

// Options a client sends during the handshake.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
)

// Option reply types; errors have bit 31 set.
const (
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4

	repErrUnsup   = 1<<31 + 1
	repErrPolicy  = 1<<31 + 2
	repErrInvalid = 1<<31 + 3
	repErrUnknown = 1<<31 + 6
	repErrTooBig  = 1<<31 + 9
)

// Information types in NBD_OPT_INFO / NBD_OPT_GO.
const (
	infoExport    = 0
	infoBlockSize = 3
)

// Transmission flags.
const (
	transHasFlags     = 1 << 0
	transReadOnly     = 1 << 1
	transCanMultiConn = 1 << 8
)

// Commands.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
)

// Command flags.
const cmdFlagReqOne = 1 << 3

// Structured reply flags and chunk types.
const (
	replyFlagDone = 1 << 0

	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeBlockStatus = 5
	replyTypeError       = 1<<15 + 1
)

// Error values in replies (the protocol's own numbering, which is Linux's errno).
const (
	errPerm     = 1
	errIO       = 5
	errInvalid  = 22
	errOverflow = 75
)

// base:allocation status flags.
const (
	stateHole = 1 << 0
	stateZero = 1 << 1
)

// The one metadata context this server offers, and the ID it is known by on the wire.
const (
	metaBaseAllocation   = "base:allocation"
	metaBaseAllocationID = 1
)

// Limits. The block sizes are advertised with NBD_INFO_BLOCK_SIZE; the others bound what a client can make
// the server allocate or do before it is cut off.
const (
	minBlockSize       = 1
	preferredBlockSize = 4096
	// MaxPayload is the largest READ a client may ask for (advertised as the maximum block size; QEMU never
	// asks for more). Larger requests get EOVERFLOW without anything being allocated.
	MaxPayload = 32 << 20

	maxOptionLength = 64 << 10 // an option's data: names are at most 4096 bytes, queries few
	maxNameLength   = 4096     // the protocol's own limit on export names
	maxOptions      = 256      // options in one handshake; QEMU sends fewer than ten
	maxDescriptors  = 1 << 12  // base:allocation extents in one BLOCK_STATUS reply

	requestHeaderLength = 28
)
