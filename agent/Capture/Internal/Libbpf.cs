using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Weft.Capture.Internal;

/// <summary>
/// The slice of libbpf (1.x, libbpf.so.1) Weft uses. Handles are opaque pointers.
/// libbpf 1.x reports errors as a negative errno from int functions, and as NULL plus errno from
/// functions returning pointers (hence SetLastError on those).
/// </summary>
internal static unsafe partial class Libbpf
{
    private const string Library = "libbpf.so.1";

    [LibraryImport(Library, EntryPoint = "bpf_object__open_mem", SetLastError = true)]
    internal static partial nint ObjectOpenMem(void* buffer, nuint size, void* options);

    [LibraryImport(Library, EntryPoint = "bpf_object__load")]
    internal static partial int ObjectLoad(nint obj);

    [LibraryImport(Library, EntryPoint = "bpf_object__close")]
    internal static partial void ObjectClose(nint obj);

    [LibraryImport(Library, EntryPoint = "bpf_object__find_program_by_name", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    internal static partial nint FindProgram(nint obj, string name);

    [LibraryImport(Library, EntryPoint = "bpf_object__find_map_by_name", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    internal static partial nint FindMap(nint obj, string name);

    [LibraryImport(Library, EntryPoint = "bpf_object__next_map")]
    internal static partial nint NextMap(nint obj, nint previous);

    [LibraryImport(Library, EntryPoint = "bpf_map__name")]
    internal static partial byte* MapName(nint map);

    [LibraryImport(Library, EntryPoint = "bpf_map__set_pin_path", StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int MapSetPinPath(nint map, string path);

    [LibraryImport(Library, EntryPoint = "bpf_map__fd")]
    internal static partial int MapFd(nint map);

    [LibraryImport(Library, EntryPoint = "bpf_program__attach_cgroup", SetLastError = true)]
    internal static partial nint ProgramAttachCgroup(nint program, int cgroupFd);

    [LibraryImport(Library, EntryPoint = "bpf_program__attach_netns", SetLastError = true)]
    internal static partial nint ProgramAttachNetns(nint program, int netnsFd);

    [LibraryImport(Library, EntryPoint = "bpf_link__open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    internal static partial nint LinkOpen(string path);

    [LibraryImport(Library, EntryPoint = "bpf_link__pin", StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int LinkPin(nint link, string path);

    [LibraryImport(Library, EntryPoint = "bpf_link__update_program")]
    internal static partial int LinkUpdateProgram(nint link, nint program);

    /// <summary>
    /// Ends a link, pinned or not: a pinned link survives bpf_link__destroy. (bpf_link__disconnect is not
    /// bound on purpose: for fd-based links (cgroup, netns) disconnect-then-destroy would leak the fd and
    /// with it a reference to the kernel link.)
    /// </summary>
    [LibraryImport(Library, EntryPoint = "bpf_link__detach")]
    internal static partial int LinkDetach(nint link);

    [LibraryImport(Library, EntryPoint = "bpf_link__destroy")]
    internal static partial int LinkDestroy(nint link);

    [LibraryImport(Library, EntryPoint = "bpf_map_update_elem")]
    internal static partial int MapUpdate(int fd, void* key, void* value, ulong flags);

    [LibraryImport(Library, EntryPoint = "bpf_map_lookup_elem")]
    internal static partial int MapLookup(int fd, void* key, void* value);

    [LibraryImport(Library, EntryPoint = "bpf_map_lookup_and_delete_elem")]
    internal static partial int MapLookupAndDelete(int fd, void* key, void* value);

    [LibraryImport(Library, EntryPoint = "bpf_map_delete_elem")]
    internal static partial int MapDelete(int fd, void* key);

    [LibraryImport(Library, EntryPoint = "bpf_obj_get", StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int ObjGet(string path);

    [LibraryImport(Library, EntryPoint = "bpf_obj_get_info_by_fd")]
    internal static partial int ObjGetInfoByFd(int fd, void* info, uint* infoLength);

    /// <summary>1 when the kernel loads a trivial program of this type, 0 when not, a negative errno when the probe failed.</summary>
    [LibraryImport(Library, EntryPoint = "libbpf_probe_bpf_prog_type")]
    internal static partial int ProbeProgramType(int programType, void* options);

    /// <summary>1 when the kernel creates a map of this type, 0 when not, a negative errno when the probe failed.</summary>
    [LibraryImport(Library, EntryPoint = "libbpf_probe_bpf_map_type")]
    internal static partial int ProbeMapType(int mapType, void* options);

    [LibraryImport(Library, EntryPoint = "libbpf_set_print")]
    internal static partial nint SetPrint(delegate* unmanaged[Cdecl]<int, byte*, nint, int> print);

    internal const ulong BPF_ANY = 0;

    /// <summary>The errno of a NULL returned by a pointer-returning libbpf function.</summary>
    internal static int LastErrno() => Marshal.GetLastPInvokeError();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int Errno(int result) => result < 0 ? -result : 0;
}
