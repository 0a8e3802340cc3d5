package scripts

import (
	_ "embed"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed lock_obtain.lua
	lockObtainSrc string
	//go:embed lock_refresh.lua
	lockRefreshSrc string
	//go:embed lock_release.lua
	lockReleaseSrc string
)

// The distributed lock's scripts, by file name. Each checks the lock's
// token, so that only its holder refreshes or releases it.
var (
	LockObtain  = redis.NewScript(lockObtainSrc)
	LockRefresh = redis.NewScript(lockRefreshSrc)
	LockRelease = redis.NewScript(lockReleaseSrc)
)
