using Weft.Capture.Internal;

namespace Weft.Capture;

/// <summary>
/// Whether this kernel loads the kinds of program and map Weft's capture uses, asked with libbpf's
/// probes (a trivial program or map of each type, loaded and freed at once; nothing is attached or pinned).
/// </summary>
internal static class BpfProbe
{
    // enum bpf_prog_type and enum bpf_map_type, include/uapi/linux/bpf.h
    private const int ProgramTypeSockOps = 13;
    private const int ProgramTypeCgroupSockAddr = 18;
    private const int ProgramTypeSkLookup = 30;
    private const int MapTypeSockHash = 18;
    private const int MapTypeSkStorage = 24;

    /// <summary>What the capture needs: the check's name, the program or map type behind it.</summary>
    public static IReadOnlyList<(string Hook, string Kind, bool IsMap, int Type)> Needed { get; } =
    [
        ("hook connect4/6", "BPF_PROG_TYPE_CGROUP_SOCK_ADDR (cgroup/connect4, cgroup/connect6)", false, ProgramTypeCgroupSockAddr),
        ("hook sockops", "BPF_PROG_TYPE_SOCK_OPS", false, ProgramTypeSockOps),
        ("hook sk_lookup", "BPF_PROG_TYPE_SK_LOOKUP", false, ProgramTypeSkLookup),
        ("map sockhash", "BPF_MAP_TYPE_SOCKHASH", true, MapTypeSockHash),
        ("map sk_storage", "BPF_MAP_TYPE_SK_STORAGE", true, MapTypeSkStorage),
    ];

    /// <summary>Null when it loads; else why not, in words.</summary>
    public static unsafe string? Problem(bool isMap, int type)
    {
        int result;
        try
        {
            result = isMap ? Libbpf.ProbeMapType(type, null) : Libbpf.ProbeProgramType(type, null);
        }
        catch (DllNotFoundException)
        {
            return "libbpf.so.1 is not installed";
        }

        return result switch
        {
            1 => null,
            0 => "this kernel does not support it",
            _ => $"the probe failed ({Mounts.Describe(-result)})",
        };
    }
}
