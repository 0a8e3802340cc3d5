// Package benchmarks compares stockpot with the libraries a Go service would
// otherwise use for the same jobs: raw go-redis (the floor),
// github.com/go-redis/cache/v9 and github.com/bsm/redislock. It holds only
// benchmarks; run.sh runs them and prints a Markdown summary.
//
// It is a module of its own, so that the comparison's dependencies never
// reach stockpot's users, and `go test ./...` at the repository root does
// not run it.
package benchmarks
