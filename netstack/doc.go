// Package netstack will be the user-mode network (gVisor tcpip) that routes
// a clone family's virtio-net traffic. It holds no code yet.
package netstack
