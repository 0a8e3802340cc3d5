// Package scripts holds the Lua scripts stockpot runs on Redis. Each script
// touches the keys of one hash slot only, so it runs on Redis Cluster.
package scripts

import (
	_ "embed"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed acquire.lua
	acquireSrc string
	//go:embed store.lua
	storeSrc string
	//go:embed renew.lua
	renewSrc string
	//go:embed release.lua
	releaseSrc string
	//go:embed tag_add.lua
	tagAddSrc string
	//go:embed store_fields.lua
	storeFieldsSrc string
)

// The scripts, by file name.
var (
	Acquire     = redis.NewScript(acquireSrc)
	Store       = redis.NewScript(storeSrc)
	Renew       = redis.NewScript(renewSrc)
	Release     = redis.NewScript(releaseSrc)
	TagAdd      = redis.NewScript(tagAddSrc)
	StoreFields = redis.NewScript(storeFieldsSrc)
)
