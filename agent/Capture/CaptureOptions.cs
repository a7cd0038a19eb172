using System.Net;

namespace Weft.Capture;

/// <summary>Where capture keeps its pins, which cgroup it attaches to, and the agent's ports.</summary>
/// <param name="PinRoot">bpffs directory for maps/ and links/, e.g. /sys/fs/bpf/weft.</param>
/// <param name="CgroupPath">cgroup v2 directory whose processes are captured (all pods below it).</param>
/// <param name="OutboundPort">the agent's listener on 127.0.0.1 / [::1] inside each pod.</param>
/// <param name="InboundPort">the agent's inbound listener inside each pod.</param>
/// <param name="TunnelPort">the agent's HBONE listener inside each pod: inbound SYNs for it are not steered.</param>
internal sealed record CaptureOptions(string PinRoot, string CgroupPath, ushort OutboundPort = 15001,
    ushort InboundPort = 15006, ushort TunnelPort = 15008)
{
    public const string DefaultPinRoot = "/sys/fs/bpf/weft";

    /// <summary>
    /// Destination ports never captured, outbound or inbound (at most 16). The agent's own ports may
    /// not be listed: a connect to them must reach the agent, which refuses it.
    /// </summary>
    public IReadOnlyList<ushort> ExcludedPorts { get; init; } = [];
}

/// <summary>What capture needs to know about one pod.</summary>
/// <param name="FailOpen">when the agent is not serving the pod, let its traffic through instead of refusing it.</param>
internal sealed record PodCapture(IPAddress? Ipv4, IPAddress? Ipv6, bool FailOpen);

/// <summary>
/// The kernel or the machine refused something capture needs. The message names the cause and the fix.
/// </summary>
internal sealed class CaptureException : Exception
{
    public CaptureException(string message, int errno = 0, Exception? inner = null)
        : base(message, inner) => Errno = errno;

    /// <summary>The errno behind the failure, 0 when there is none.</summary>
    public int Errno { get; }
}
