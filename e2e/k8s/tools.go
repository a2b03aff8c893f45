//go:build tools

// Package tools pins the Kubernetes commands that tortie's tests run: the control plane, and the
// kubelet and scheduler of the optional real node (e2e/cluster.sh up --node).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
