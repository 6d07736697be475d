# The image deploy/kubernetes runs: flowrun and flowbackup, built from this
# checkout, on a small base without a shell, as an unprivileged user.
#
#   docker build -t ghcr.io/flowkeep/flowkeep:latest .
#
# deploy/dockerfile_test.go checks it against the code: the Go version is
# go.mod's, the binaries copied are the ones `go build ./cmd/...` makes,
# the user is not root, and the manifests name this image.

FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static binaries (the SQLite driver is pure Go), one per command in cmd/.
RUN CGO_ENABLED=0 go build -trimpath -o /out/ ./cmd/...

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/flowrun /out/flowbackup /usr/local/bin/
# The manifests' runAsUser; no shell, no package manager.
USER 10001:10001
CMD ["flowrun", "--help"]
