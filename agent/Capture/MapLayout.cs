using System.Runtime.InteropServices;

namespace Weft.Capture;

// C# mirrors of the structs in bpf/weft.h. Field names are the C names in PascalCase;
// tests/Capture/MapLayoutTests.cs checks sizes and offsets against the BTF of the built objects
// and the constants against the header itself.

/// <summary>Constants from bpf/weft.h.</summary>
internal static class MapLayout
{
    internal const uint LayoutVersion = 2;

    /// <summary>Pinned layouts this agent upgrades in place, with the maps it replaces rather than adopts.</summary>
    internal static readonly IReadOnlyDictionary<uint, string[]> UpgradableFrom = new Dictionary<uint, string[]>
    {
        // v1 → v2: weft_config lost socket_mark and gained tunnel_port; every other map is unchanged,
        // and agent_sockets is new (created, nothing to adopt).
        [1] = ["config"],
    };
    internal const int MaxExcludedPorts = 16;

    internal const uint PodFailOpen = 1u << 0;
    internal const uint PodHasIpv4 = 1u << 1;
    internal const uint PodHasIpv6 = 1u << 2;

    internal const ushort AdminPort = 15000;
    internal const ushort HbonePort = 15008;
    internal const ushort MetricsPort = 15020;
    internal const ushort ReadyPort = 15021;

    internal const ushort FamilyInet = 2;
    internal const ushort FamilyInet6 = 10;
}

/// <summary>struct weft_addr: IPv6 as is, IPv4 as ::ffff:a.b.c.d.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct WeftAddr
{
    public fixed byte Bytes[16];
}

/// <summary>struct weft_pod: value of `enrolled` and `pod_addrs`.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct WeftPod
{
    public uint Ipv4;
    public uint Flags;
    public fixed byte Ipv6[16];
}

/// <summary>struct weft_orig_dst: the destination a connect() asked for.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct WeftOrigDst
{
    public fixed byte Addr[16];
    public ushort Port;
    public ushort Family;
}

/// <summary>struct weft_conn_key: key of `orig_dst`.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct WeftConnKey
{
    public ulong NetnsCookie;
    public ushort ClientPort;
    public ushort Family;
    public uint Pad;
}

/// <summary>struct weft_config: the one value of `config`.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct WeftConfig
{
    public uint LayoutVersion;
    public ushort OutboundPort;
    public ushort InboundPort;
    public ushort TunnelPort;
    public ushort Pad;
    public fixed ushort ExcludedPorts[16];
}

/// <summary>struct weft_delivery_key: key of `deliveries`, a transparent delivery's SYN as the pod sees it.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct WeftDeliveryKey
{
    public WeftAddr Remote;
    public WeftAddr Local;
    public ushort RemotePort;
    public ushort LocalPort;
    public uint Pad;
}
