module github.com/sfvmm/sfvmm

go 1.26.0

require (
	github.com/xi2/xz v0.0.0-20171230120015-48954b6210f8
	golang.org/x/sys v0.50.0
)
