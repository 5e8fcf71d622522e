// volume-device-plugin: a kubelet device plugin for volguard's real-node tests
// that behaves as the Brightbox volume device plugin does (seed 000).
//
// One device-plugin endpoint per volume id, advertising the resource
// volumes.brightbox.com/<id>: one device (ID <id>) while <dir>/virtio-<id>
// exists, an empty device list (capacity 0) once it is gone, and one device
// again when it comes back. <dir> stands in for /dev/disk/by-id; it is polled.
// The volume ids come from the command line, or, with none given, from the
// virtio-* entries of <dir> (and any that appear later).
//
// Allocate passes the volume into the container at
// /dev/disk/by-id/virtio-<id>: as a device (DeviceSpec) when the host path is,
// or links to, a device node (in the tests a symlink to /dev/null, as
// /dev/disk/by-id/virtio-<id> links to ../../vdX on a real host), and as a
// bind mount when it is a regular file, which the container runtime cannot
// pass as a device.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

const (
	resourcePrefix = "volumes.brightbox.com/"
	linkPrefix     = "virtio-"
	containerDir   = "/dev/disk/by-id"
)

// endpoint serves one volume's resource.
type endpoint struct {
	pluginapi.UnimplementedDevicePluginServer
	id        string
	hostPath  string
	socketDir string
	socket    string // file name in socketDir

	mu      sync.Mutex
	present bool
	changed chan struct{} // closed (and replaced) at each change of present
	server  *grpc.Server
	// registered: the kubelet accepted the last registration; until then the
	// main loop tries again at every poll.
	registered bool
}

func newEndpoint(id, dir, socketDir string) *endpoint {
	return &endpoint{
		id:        id,
		hostPath:  filepath.Join(dir, linkPrefix+id),
		socketDir: socketDir,
		socket:    "brightbox-" + id + ".sock",
		present:   exists(filepath.Join(dir, linkPrefix+id)),
		changed:   make(chan struct{}),
	}
}

func (e *endpoint) resource() string { return resourcePrefix + e.id }

// exists: Lstat, so that a link whose target is gone still counts, as udev's
// links do until udev removes them.
func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// poll reads the host path and, when its presence changed, wakes the
// ListAndWatch streams.
func (e *endpoint) poll() {
	now := exists(e.hostPath)
	e.mu.Lock()
	defer e.mu.Unlock()
	if now == e.present {
		return
	}
	e.present = now
	close(e.changed)
	e.changed = make(chan struct{})
	log.Printf("%s: %s %s: %d device(s)", e.resource(), e.hostPath, map[bool]string{true: "appeared", false: "went away"}[now], map[bool]int{true: 1, false: 0}[now])
}

func (e *endpoint) devices() ([]*pluginapi.Device, chan struct{}) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.present {
		return []*pluginapi.Device{}, e.changed
	}
	return []*pluginapi.Device{{ID: e.id, Health: pluginapi.Healthy}}, e.changed
}

func (e *endpoint) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

func (e *endpoint) ListAndWatch(_ *pluginapi.Empty, stream grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	for {
		devs, changed := e.devices()
		if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: devs}); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

func (e *endpoint) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, c := range req.ContainerRequests {
		for _, id := range c.DevicesIds {
			if id != e.id {
				return nil, fmt.Errorf("%s: unknown device %q", e.resource(), id)
			}
		}
		info, err := os.Stat(e.hostPath)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", e.resource(), err)
		}
		in := filepath.Join(containerDir, linkPrefix+e.id)
		car := &pluginapi.ContainerAllocateResponse{}
		if info.Mode()&os.ModeDevice != 0 {
			car.Devices = []*pluginapi.DeviceSpec{{HostPath: e.hostPath, ContainerPath: in, Permissions: "rw"}}
		} else {
			car.Mounts = []*pluginapi.Mount{{HostPath: e.hostPath, ContainerPath: in}}
		}
		log.Printf("%s: allocated %s as %s", e.resource(), e.hostPath, in)
		resp.ContainerResponses = append(resp.ContainerResponses, car)
	}
	return resp, nil
}

func (e *endpoint) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return &pluginapi.PreferredAllocationResponse{}, nil
}

func (e *endpoint) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// start serves on the endpoint's socket and registers with the kubelet.
func (e *endpoint) start() error {
	path := filepath.Join(e.socketDir, e.socket)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	s := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(s, e)
	go func() { _ = s.Serve(l) }()
	e.mu.Lock()
	e.server = s
	e.mu.Unlock()

	conn, err := grpc.NewClient("unix://"+filepath.Join(e.socketDir, "kubelet.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	// Short: the main loop waits for it, and tries again at the next poll.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     e.socket,
		ResourceName: e.resource(),
		Options:      &pluginapi.DevicePluginOptions{},
	}, grpc.WaitForReady(true))
	if err != nil {
		return fmt.Errorf("registering %s with the kubelet: %w", e.resource(), err)
	}
	log.Printf("%s: registered on %s", e.resource(), path)
	e.mu.Lock()
	e.registered = true
	e.mu.Unlock()
	return nil
}

// retry serves and registers again when the last registration failed.
func (e *endpoint) retry() {
	e.mu.Lock()
	registered := e.registered
	e.mu.Unlock()
	if registered {
		return
	}
	e.stop()
	if err := e.start(); err != nil {
		log.Printf("%v (retrying)", err)
	}
}

func (e *endpoint) stop() {
	e.mu.Lock()
	s := e.server
	e.server = nil
	e.registered = false
	e.mu.Unlock()
	if s != nil {
		s.Stop()
	}
	_ = os.Remove(filepath.Join(e.socketDir, e.socket))
}

// kubeletID tells one kubelet registration socket from the next: a kubelet
// that restarts makes a new one (and removes the plugins' sockets).
func kubeletID(socketDir string) (uint64, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(socketDir, "kubelet.sock"), &st); err != nil {
		return 0, false
	}
	return st.Ino, true
}

// scan lists the volume ids with a link in dir.
func scan(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutPrefix(e.Name(), linkPrefix); ok && id != "" {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

func main() {
	dir := flag.String("dir", "/dev/disk/by-id", "the folder holding the virtio-<volume id> links")
	socketDir := flag.String("kubelet-socket-dir", pluginapi.DevicePluginPath, "the kubelet's device-plugins folder (its kubelet.sock registers plugins)")
	interval := flag.Duration("poll", time.Second, "how often to look at the folder")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s [flags] [volume-id...]\n\nWithout volume ids, serves every virtio-* in --dir, including those that appear later.\n\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("volume-device-plugin: ")

	fixed := flag.NArg() > 0
	ids := flag.Args()
	if !fixed {
		ids = scan(*dir)
	}
	endpoints := map[string]*endpoint{}
	add := func(id string) {
		e := newEndpoint(id, *dir, *socketDir)
		endpoints[id] = e
		if err := e.start(); err != nil {
			log.Printf("%v (retrying)", err)
		}
	}

	// The kubelet must be up before the first registration.
	for {
		if _, ok := kubeletID(*socketDir); ok {
			break
		}
		log.Printf("waiting for %s", filepath.Join(*socketDir, "kubelet.sock"))
		time.Sleep(*interval)
	}
	kubelet, _ := kubeletID(*socketDir)
	for _, id := range ids {
		add(id)
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for {
		select {
		case sig := <-sigs:
			log.Printf("%v: stopping", sig)
			for _, e := range endpoints {
				e.stop()
			}
			return
		case <-tick.C:
		}
		if !fixed {
			for _, id := range scan(*dir) {
				if endpoints[id] == nil {
					add(id)
				}
			}
		}
		for _, e := range endpoints {
			e.poll()
		}
		// A new kubelet first (every endpoint registers again), then the endpoints
		// whose last registration failed, while a kubelet listens: one registration
		// per endpoint and tick at most.
		now, up := kubeletID(*socketDir)
		if up && now != kubelet {
			log.Printf("the kubelet's socket changed: registering again")
			kubelet = now
			for _, e := range endpoints {
				e.stop()
				if err := e.start(); err != nil {
					log.Printf("%v (retrying)", err)
				}
			}
		} else if up {
			for _, e := range endpoints {
				e.retry()
			}
		}
	}
}
