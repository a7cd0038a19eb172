using System.Collections.Frozen;
using System.Net;
using System.Net.NetworkInformation;
using Weft.Inventory;

namespace Weft.Proxy;

/// <summary>
/// Tells whether a destination is the agent itself, so no connection can make the agent connect to
/// its own listeners: one connect to a pod's 15006 would otherwise be delivered to 15006 again, and
/// again, until the node runs out of descriptors.
/// <code>
///  port is one of the agent's (15001 15006 15008 15000 15020 15021)
///    and the address is loopback or unspecified, an enrolled pod's (any node), or a node's  → refuse
/// </code>
/// An unenrolled pod's address is not the agent's: an app outside the mesh may serve port 15000.
/// Node addresses are this node's interfaces plus every pod's status.hostIPs and every host-network
/// pod's address.
/// </summary>
internal sealed class SelfTarget
{
    private readonly FrozenDictionary<int, string> _ports;
    private readonly FrozenSet<IPAddress> _localAddresses;

    public SelfTarget(ProxyOptions options, IEnumerable<IPAddress> localAddresses)
    {
        var ports = new Dictionary<int, string>
        {
            [options.OutboundPort] = "outbound listener",
            [options.InboundPort] = "inbound listener",
            [HbonePool.TunnelPort] = "tunnel listener",
        };
        foreach (var (port, what) in options.HostPorts)
        {
            ports.TryAdd(port, what);
        }

        _ports = ports.ToFrozenDictionary();
        _localAddresses = localAddresses.Select(Normalize).ToFrozenSet();
    }

    /// <summary>The addresses of the calling thread's network namespace (the agent's, at start).</summary>
    public static IReadOnlyList<IPAddress> InterfaceAddresses()
    {
        try
        {
            return NetworkInterface.GetAllNetworkInterfaces()
                .SelectMany(i => i.GetIPProperties().UnicastAddresses)
                .Select(a => a.Address)
                .ToList();
        }
        catch (NetworkInformationException)
        {
            return [];
        }
    }

    /// <summary>Whether the port is one of the agent's, whatever the address (for a destination already known to be this pod).</summary>
    public bool IsAgentPort(int port, out string what) => _ports.TryGetValue(port, out what!);

    /// <summary>Null when <paramref name="destination"/> is not the agent; else why it is refused.</summary>
    public string? Check(IPEndPoint destination, InventorySnapshot snapshot)
    {
        if (!_ports.TryGetValue(destination.Port, out var what))
        {
            return null;
        }

        var address = Normalize(destination.Address);
        var self = IPAddress.IsLoopback(address) || address.Equals(IPAddress.Any) || address.Equals(IPAddress.IPv6Any)
            || _localAddresses.Contains(address)
            || snapshot.IsNodeAddress(address)
            || (snapshot.TryGetWorkload(address, out var workload) && workload.Enrolled);
        return self ? Reason(destination, what) : null;
    }

    public static string Reason(IPEndPoint destination, string what) =>
        $"{destination} is the agent's own {what}: refused so the agent never connects to itself";

    private static IPAddress Normalize(IPAddress address) => address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address;
}
