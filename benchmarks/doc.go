// Package benchmarks compares stockpot with the libraries a Go service would
// otherwise use for the same jobs: raw go-redis (the floor),
// github.com/go-redis/cache/v9, github.com/redis/rueidis,
// github.com/dtm-labs/rockscache, github.com/viccon/sturdyc, a bare
// github.com/maypok86/otter/v2 lookup, github.com/bsm/redislock, and
// redis-benchmark as the server's physical limit. It holds only benchmarks
// and cmd/table; run.sh runs them and prints a Markdown summary.
//
// It is a module of its own, so that the comparison's dependencies never
// reach stockpot's users, and `go test ./...` at the repository root does
// not run it.
package benchmarks
