// Package scripts holds the Lua scripts stockpot runs on Redis. Each script
// touches the keys of one hash slot only, so it runs on Redis Cluster.
package scripts

import (
	_ "embed"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed store_many.lua
	storeManySrc string
	//go:embed release_many.lua
	releaseManySrc string
	//go:embed renew.lua
	renewSrc string
	//go:embed release.lua
	releaseSrc string
	//go:embed tag_gen.lua
	tagGenSrc string
	//go:embed gens.lua
	gensSrc string
	//go:embed store_fields.lua
	storeFieldsSrc string
	//go:embed lock_obtain.lua
	lockObtainSrc string
	//go:embed lock_refresh.lua
	lockRefreshSrc string
)

// Script is a Lua script and its source, which is sent with EVAL when the
// server answers EVALSHA with NOSCRIPT.
type Script struct {
	*redis.Script
	Src string
}

func newScript(src string) *Script { return &Script{Script: redis.NewScript(src), Src: src} }

// The scripts, by file name.
var (
	StoreMany   = newScript(storeManySrc)
	ReleaseMany = newScript(releaseManySrc)
	Renew       = newScript(renewSrc)
	TagGen      = newScript(tagGenSrc)
	Gens        = newScript(gensSrc)
	StoreFields = newScript(storeFieldsSrc)
	// Release deletes a key that holds a token, only while it holds that
	// token: a load's lease, or a distributed lock.
	Release = newScript(releaseSrc)
	// The distributed lock's other scripts. Each checks the lock's token, so
	// that only its holder refreshes it.
	LockObtain  = newScript(lockObtainSrc)
	LockRefresh = newScript(lockRefreshSrc)
)

// All lists every script, for loading them ahead of their first use.
var All = []*Script{StoreMany, ReleaseMany, Renew, Release, TagGen, Gens, StoreFields, LockObtain, LockRefresh}
