// Command pause is the sandbox ("pause") container of the e2e node's pods: it holds the pod's
// namespaces open and exits on SIGTERM or SIGINT. Built static and packed into a local image
// because the test machine cannot pull registry.k8s.io/pause.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	// As PID 1 of the pod, reap the children a container might leave to it.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGCHLD)
	<-sigs
}
