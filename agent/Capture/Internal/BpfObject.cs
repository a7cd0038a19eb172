using System.Runtime.InteropServices;

namespace Weft.Capture.Internal;

/// <summary>
/// One embedded .bpf.o, opened and loaded by libbpf with every map pinned under one directory:
/// a map already pinned there is reused instead of created, which is how a restarted agent (and
/// the second object) adopts the state the first one left.
/// </summary>
internal sealed unsafe class BpfObject : IDisposable
{
    private nint _obj;
    private void* _image;

    private BpfObject(string name, nint obj, void* image)
    {
        Name = name;
        _obj = obj;
        _image = image;
    }

    public string Name { get; }

    public static BpfObject Load(string resourceName, string mapPinDirectory)
    {
        using var stream = typeof(BpfObject).Assembly.GetManifestResourceStream(resourceName)
            ?? throw new CaptureException($"the agent was built without {resourceName}; rebuild it with clang installed (the BPF build step compiles bpf/*.bpf.c)");
        var bytes = new byte[stream.Length];
        stream.ReadExactly(bytes);
        return Load(resourceName, bytes, mapPinDirectory);
    }

    public static BpfObject Load(string resourceName, ReadOnlySpan<byte> elf, string mapPinDirectory)
    {
        var length = (nuint)elf.Length;
        // libbpf keeps pointing into the image until the object is closed
        var image = NativeMemory.Alloc(length);
        elf.CopyTo(new Span<byte>(image, elf.Length));

        using var log = LibbpfLog.Collect();
        var obj = Libbpf.ObjectOpenMem(image, length, null);
        if (obj == 0)
        {
            var errno = Libbpf.LastErrno();
            NativeMemory.Free(image);
            throw new CaptureException(
                $"libbpf could not open {resourceName} ({Mounts.Describe(errno)}): {log.Tail(1500)}; the object and libbpf disagree, rebuild the agent", errno);
        }

        var loaded = new BpfObject(resourceName, obj, image);
        try
        {
            for (var map = Libbpf.NextMap(obj, 0); map != 0; map = Libbpf.NextMap(obj, map))
            {
                var name = Marshal.PtrToStringUTF8((nint)Libbpf.MapName(map)) ?? "";
                if (name.Contains('.'))
                {
                    continue; // .rodata/.bss belong to one object, never shared
                }
                var rc = Libbpf.MapSetPinPath(map, Path.Combine(mapPinDirectory, name));
                if (rc < 0)
                {
                    throw new CaptureException($"libbpf refused pin path for map {name} ({Mounts.Describe(-rc)})", -rc);
                }
            }

            var load = Libbpf.ObjectLoad(obj);
            if (load < 0)
            {
                throw LoadFailure(resourceName, -load, log.Tail(3000), mapPinDirectory);
            }
            return loaded;
        }
        catch
        {
            loaded.Dispose();
            throw;
        }
    }

    public nint Program(string name)
    {
        var program = Libbpf.FindProgram(_obj, name);
        return program != 0 ? program : throw new CaptureException($"{Name} has no program {name}; rebuild the agent");
    }

    public int MapFd(string name)
    {
        var map = Libbpf.FindMap(_obj, name);
        var fd = map != 0 ? Libbpf.MapFd(map) : -1;
        return fd >= 0 ? fd : throw new CaptureException($"{Name} has no map {name}; rebuild the agent");
    }

    public void Dispose()
    {
        if (_obj != 0)
        {
            Libbpf.ObjectClose(_obj);
            _obj = 0;
        }
        if (_image != null)
        {
            NativeMemory.Free(_image);
            _image = null;
        }
    }

    private static CaptureException LoadFailure(string resourceName, int errno, string log, string mapPinDirectory)
    {
        if (log.Contains("PROG LOAD LOG", StringComparison.Ordinal))
        {
            return new CaptureException(
                $"the kernel's verifier rejected a program in {resourceName} ({Mounts.Describe(errno)}). " +
                $"Weft needs Linux 5.9 or newer with BPF sk_lookup, sockops and cgroup sock_addr hooks; on such a kernel this is a bug in bpf/. " +
                $"Verifier log (tail):\n{log}", errno);
        }
        if (log.Contains("reuse pinned map", StringComparison.Ordinal) || (log.Contains("pinned map", StringComparison.Ordinal) && errno == 22))
        {
            return new CaptureException(
                $"the maps pinned under {mapPinDirectory} do not match this agent's map definitions ({Mounts.Describe(errno)}); " +
                $"remove them with BpfCapture.Uninstall (weft uninstall), which drops captured state. libbpf said: {log}", errno);
        }
        if (errno is 1 or 13)
        {
            return new CaptureException(
                $"the kernel refused to load {resourceName} ({Mounts.Describe(errno)}): loading eBPF needs root, or CAP_BPF with CAP_NET_ADMIN and CAP_SYS_ADMIN; " +
                $"run the agent privileged. libbpf said: {log}", errno);
        }
        return new CaptureException($"libbpf could not load {resourceName} ({Mounts.Describe(errno)}): {log}", errno);
    }
}
