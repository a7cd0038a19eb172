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
/// <paramref name="AppProtocol"/> is the port's spec.appProtocol (as "kubernetes.io/h2c"), or null.
/// </summary>
internal sealed record ServicePort(string? Name, int Port, int? TargetPortNumber, string? TargetPortName, string Protocol, string? AppProtocol = null)
{
    /// <summary>
    /// The port speaks HTTP/2 with prior knowledge in cleartext: Kubernetes' standard application protocol
    /// <c>kubernetes.io/h2c</c> (Gateway API's backend protocol, GEP-1911), or Istio's <c>http2</c> and <c>grpc</c>.
    /// </summary>
    public bool IsH2c => AppProtocol is "kubernetes.io/h2c" or "h2c" or "http2" or "grpc";
}

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
