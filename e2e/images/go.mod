module github.com/tortie-dev/tortie/e2e/images

go 1.24.0
