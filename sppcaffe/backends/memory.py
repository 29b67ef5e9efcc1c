"""SyncedMemory: one float32 buffer mirrored on the host and the device.

Caffe's scheme: whichever side was last handed out for writing is the
"head"; the other side is brought up to date only when it is asked for.
So a net that runs on the GPU copies nothing between layers, and a blob is
copied to the host only when Python reads ``blob.data``.  Handing out the
host array counts as a write (NumPy arrays cannot be lent read-only
cheaply), as pycaffe's ``mutable_cpu_data`` does.
"""
import numpy as np

UNINIT, HOST, DEVICE, SYNCED = 0, 1, 2, 3


class SyncedMemory:
    __slots__ = ("count", "host", "dev", "head", "_views")

    def __init__(self, count, host=None):
        self.count = int(count)
        self.host = host            # flat float32, allocated when first needed
        self.dev = None             # device Allocation, likewise
        self.head = UNINIT if host is None else HOST
        self._views = {}            # shape -> view of host: one array object per shape

    def host_view(self, shape, write=True):
        """The host copy, current, seen with `shape`; made the head unless
        the caller only reads (`write` False).  Blobs sharing this memory
        with one shape get the same array."""
        if self.head == DEVICE:
            self.to_host()
            if not write:
                self.head = SYNCED          # read only: the device copy stays valid
        elif self.head == UNINIT or (write and self.head == SYNCED):
            self.to_host()
        view = self._views.get(shape)
        if view is None:
            view = self._views[shape] = self.host.reshape(shape)
        return view

    def to_host(self):
        """Make the host copy current and the head (before a host write)."""
        if self.head == DEVICE:
            if self.host is None:
                self.host = np.empty(self.count, np.float32)
            self.dev.device.download(self.dev.ptr, self.host)
        elif self.head == UNINIT:
            self.host = np.zeros(self.count, np.float32)
        self.head = HOST
        return self.host

    def device_ptr(self, device):
        """The device copy's address, current (for reading)."""
        dev = self.dev
        if dev is not None and dev.device is not device:
            self.to_host()                  # changing device: through the host
            dev = self.dev = None
        if dev is None:
            dev = self.dev = device.alloc(4 * self.count)
            if self.head == UNINIT:
                device.memset0(dev.ptr, 4 * self.count)
                self.head = DEVICE
        if self.head == HOST:
            device.upload(dev.ptr, self.host)
            self.head = SYNCED
        return dev.ptr

    def mutable_device_ptr(self, device):
        """The device copy's address, made the head (before a device write)."""
        ptr = self.device_ptr(device)
        self.head = DEVICE
        return ptr
