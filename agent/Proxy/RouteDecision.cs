using System.Net;
using Weft.Identity;
using Weft.Inventory;

namespace Weft.Proxy;

/// <summary>
/// Where an outbound connection goes, decided from the inventory alone (no socket, no namespace), so
/// every rule is testable as a table; Outbound.cs only carries the plan out.
/// <code>
///  Service VIP?          → next ready endpoint (round robin), none ready → Deny UH
///  the agent itself?     → Deny LOOP
///  CA configured and destination a meshed, non-host-network pod
///      on this node      → DeliverLocal (in-process, authorized as if tunnelled)
///      elsewhere         → Tunnel (HBONE to its SPIFFE id at its address)
///  anything else         → Plaintext
/// </code>
/// </summary>
internal static class RouteDecision
{
    /// <param name="trustDomain">The mesh's trust domain; null when no CA is configured (everything goes plaintext).</param>
    /// <param name="localPods">This node's enrolled pods by address: the in-process short cut.</param>
    public static RoutePlan Decide<TLocal>(InventorySnapshot snapshot, LocalPod source, IPEndPoint original, SelfTarget selfTarget,
        string? trustDomain, IReadOnlyDictionary<IPAddress, TLocal> localPods)
        where TLocal : class
    {
        var destination = original;
        string? service = null;
        if (snapshot.TryResolveService(original, out var resolved))
        {
            service = $"{resolved.Service.Namespace}/{resolved.Service.Name}";
            if (resolved.Pick() is not { } picked)
            {
                return new DenyPlan(new ProxyError(ProxyErrorKind.NoHealthyUpstream, "service has no ready endpoint")) { DestinationService = service };
            }

            destination = picked;
        }

        var target = snapshot.TryGetWorkload(destination.Address, out var workload) ? workload : null;

        // Before any tunnel or dial: a destination that is the agent itself would loop back into it.
        if (selfTarget.Check(destination, snapshot) is { } loop)
        {
            return new DenyPlan(new ProxyError(ProxyErrorKind.Loop, loop)) { Destination = destination, DestinationService = service, Target = target };
        }

        if (trustDomain is null || target is not { Enrolled: true, HostNetwork: false })
        {
            return new PlaintextPlan { Destination = destination, DestinationService = service, Target = target };
        }

        var sourceId = new SpiffeId(trustDomain, source.Namespace, source.ServiceAccount);
        var destinationId = new SpiffeId(trustDomain, target.Namespace, target.ServiceAccount);
        return localPods.TryGetValue(destination.Address, out var local)
            ? new DeliverLocalPlan<TLocal>(local, sourceId, destinationId) { Destination = destination, DestinationService = service, Target = target }
            : new TunnelPlan(sourceId, destinationId) { Destination = destination, DestinationService = service, Target = target };
    }
}

/// <summary>What to do with one outbound connection, and what the flow records of its destination.</summary>
internal abstract record RoutePlan
{
    /// <summary>Where the connection goes (a VIP's picked endpoint); null when no endpoint could be picked.</summary>
    public IPEndPoint? Destination { get; init; }

    /// <summary>"namespace/name" of the service whose VIP was dialled, if any.</summary>
    public string? DestinationService { get; init; }

    /// <summary>The workload at <see cref="Destination"/>, when the inventory knows one.</summary>
    public Workload? Target { get; init; }
}

/// <summary>A meshed pod on this node: handed over in-process to <paramref name="Pod"/>'s inbound side.</summary>
internal sealed record DeliverLocalPlan<TLocal>(TLocal Pod, SpiffeId SourceId, SpiffeId DestinationId) : RoutePlan;

/// <summary>A meshed pod on another node: an HBONE stream, as <paramref name="SourceId"/>, to <paramref name="DestinationId"/>.</summary>
internal sealed record TunnelPlan(SpiffeId SourceId, SpiffeId DestinationId) : RoutePlan
{
    /// <summary>Where the tunnel is dialled (its port 15008).</summary>
    public IPAddress Address => Destination!.Address;

    /// <summary>The CONNECT authority: the destination's address and port.</summary>
    public string Authority => Destination!.ToString();
}

/// <summary>Not meshed (or no CA): a plain connection from inside the source pod.</summary>
internal sealed record PlaintextPlan : RoutePlan;

/// <summary>Refused before anything is dialled.</summary>
internal sealed record DenyPlan(ProxyError Error) : RoutePlan;
