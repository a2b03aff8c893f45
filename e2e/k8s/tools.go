//go:build tools

// Package tools pins the Kubernetes control-plane commands that tortie's tests run.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
