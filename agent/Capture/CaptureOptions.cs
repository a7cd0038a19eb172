using System.Net;

namespace Weft.Capture;

/// <summary>Where capture keeps its pins, which cgroup it attaches to, and the agent's ports and mark.</summary>
/// <param name="PinRoot">bpffs directory for maps/ and links/, e.g. /sys/fs/bpf/weft.</param>
/// <param name="CgroupPath">cgroup v2 directory whose processes are captured (all pods below it).</param>
/// <param name="OutboundPort">the agent's listener on 127.0.0.1 / [::1] inside each pod.</param>
/// <param name="InboundPort">the agent's inbound listener inside each pod.</param>
/// <param name="SocketMark">SO_MARK on the agent's own sockets inside pods: never captured.</param>
public sealed record CaptureOptions(string PinRoot, string CgroupPath, ushort OutboundPort = 15001,
    ushort InboundPort = 15006, uint SocketMark = 0x7765_6674 /* "weft" */)
{
    public const string DefaultPinRoot = "/sys/fs/bpf/weft";
}

/// <summary>What capture needs to know about one pod.</summary>
/// <param name="FailOpen">when the agent is not serving the pod, let its traffic through instead of refusing it.</param>
public sealed record PodCapture(IPAddress? Ipv4, IPAddress? Ipv6, bool FailOpen);

/// <summary>
/// The kernel or the machine refused something capture needs. The message names the cause and the fix.
/// </summary>
public sealed class CaptureException : Exception
{
    public CaptureException(string message, int errno = 0, Exception? inner = null)
        : base(message, inner) => Errno = errno;

    /// <summary>The errno behind the failure, 0 when there is none.</summary>
    public int Errno { get; }
}
