using System.Collections.Immutable;
using System.Net;

namespace Weft.Inventory;

/// <summary>A Kubernetes Service with the endpoints its EndpointSlices list.</summary>
internal sealed record Service
{
    public required string Name { get; init; }

    public required string Namespace { get; init; }

    /// <summary>spec.clusterIPs (or spec.clusterIP); empty for headless and ExternalName services.</summary>
    public required ImmutableArray<IPAddress> ClusterIps { get; init; }

    public required ImmutableArray<ServicePort> Ports { get; init; }

    /// <summary>Every endpoint address of every slice labelled kubernetes.io/service-name=&lt;Name&gt;, ready or not.</summary>
    public required ImmutableArray<ServiceEndpoint> Endpoints { get; init; }

    public override string ToString() => $"{Namespace}/{Name}";
}

/// <summary>
/// One service port. The target port is either a number or the name of a container port; with a name,
/// only the EndpointSlice ports (which carry the resolved number) say where traffic goes.
/// </summary>
internal sealed record ServicePort(string? Name, int Port, int? TargetPortNumber, string? TargetPortName, string Protocol);

/// <summary>
/// One endpoint address from an EndpointSlice, with that slice's ports. Conditions follow Kubernetes:
/// a missing ready counts as ready, a missing serving as the ready value, a missing terminating as false.
/// </summary>
internal sealed record ServiceEndpoint
{
    public required IPAddress Address { get; init; }

    public required bool Ready { get; init; }

    public required bool Serving { get; init; }

    public required bool Terminating { get; init; }

    public string? NodeName { get; init; }

    /// <summary>The pod behind the endpoint (targetRef of kind Pod), when the slice names one.</summary>
    public PodReference? Pod { get; init; }

    /// <summary>The EndpointSlice this address came from.</summary>
    public required string SliceName { get; init; }

    public required ImmutableArray<EndpointPort> Ports { get; init; }
}

internal sealed record EndpointPort(string? Name, int Port, string Protocol);

internal sealed record PodReference(string Namespace, string Name)
{
    public override string ToString() => $"{Namespace}/{Name}";
}
