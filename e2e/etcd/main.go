// Command etcd is etcd's own server main, built from the pinned go.etcd.io/etcd/server/v3 module
// for tortie's e2e control plane (see e2e/README.md). `go install go.etcd.io/etcd/server/v3@...`
// does not work (server/go.mod has replace directives); a wrapper module does.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
