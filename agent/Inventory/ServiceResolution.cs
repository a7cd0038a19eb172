using System.Collections.Immutable;
using System.Net;
using System.Net.Sockets;

namespace Weft.Inventory;

/// <summary>
/// Maps a service port to endpoint ports the way kube-proxy does: the EndpointSlice port with the same
/// name as the service port carries the resolved target port (this is how a named targetPort becomes a
/// number); a slice without such a port falls back to a numeric targetPort.
/// </summary>
internal static class ServiceResolution
{
    public static ImmutableArray<IPEndPoint> ReadyEndpoints(Service service, ServicePort port, AddressFamily family)
    {
        var result = ImmutableArray.CreateBuilder<IPEndPoint>();
        var seen = new HashSet<IPEndPoint>();
        foreach (var endpoint in service.Endpoints)
        {
            if (!endpoint.Ready || endpoint.Address.AddressFamily != family)
            {
                continue;
            }

            if (EndpointPortFor(port, endpoint.Ports) is not { } number)
            {
                continue;
            }

            var target = new IPEndPoint(endpoint.Address, number);
            if (seen.Add(target))
            {
                result.Add(target);
            }
        }

        return result.ToImmutable();
    }

    public static int? EndpointPortFor(ServicePort port, ImmutableArray<EndpointPort> slicePorts)
    {
        var name = port.Name ?? "";
        foreach (var candidate in slicePorts)
        {
            if ((candidate.Name ?? "") == name && candidate.Protocol == port.Protocol)
            {
                return candidate.Port;
            }
        }

        return port.TargetPortNumber;
    }
}
