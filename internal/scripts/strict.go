package scripts

import _ "embed"

var (
	//go:embed strict_heartbeat.lua
	strictHeartbeatSrc string
	//go:embed strict_drop.lua
	strictDropSrc string
)

// The strict local tier's scripts (strict.go in the package).
var (
	// StrictHeartbeat registers a Manager and publishes its heartbeat.
	StrictHeartbeat = newScript(strictHeartbeatSrc)
	// StrictDrop publishes a drop and returns the Managers that may hold
	// a lease.
	StrictDrop = newScript(strictDropSrc)
)

// The strict scripts are loaded ahead of their first use with the others.
func init() { All = append(All, StrictHeartbeat, StrictDrop) }
