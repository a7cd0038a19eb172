using System.Collections.Immutable;
using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using k8s;
using k8s.Models;
using Weft.Policy;

namespace Weft.Inventory;

/// <summary>
/// The one path from Kubernetes objects to an <see cref="InventorySnapshot"/>. The standalone file and the
/// Kubernetes watches both hand their objects to <see cref="InventoryState"/> (one object at a time; this class
/// feeds it a whole set at once), so a file behaves exactly like a cluster would.
/// <code>
///   Namespace ─┐
///   Pod ───────┼─► validate each object (skip the unusable ones, with a warning naming them)
///   Service ───┤      └─► join EndpointSlices to Services by kubernetes.io/service-name
///   EndpointSlice ┘          └─► InventorySnapshot (indexes by IP, node, VIP)
///   AuthorizationPolicy, PeerAuthentication (weft.dev/v1alpha1) ─► PolicyCompiler ─► snapshot.Policies
///   anything else ─► ignored with a debug note (ingresses come later)
/// </code>
/// </summary>
internal static class InventoryBuilder
{
    public const string MeshLabel = "weft.dev/mesh";
    public const string NetnsAnnotation = "weft.dev/netns";
    public const string FailOpenAnnotation = "weft.dev/fail-open";
    public const string ServiceNameLabel = "kubernetes.io/service-name";

    /// <summary>
    /// Builds an unpublished snapshot (version 0). Objects that cannot be used are left out and described in
    /// <see cref="InventorySnapshot.Warnings"/>; this method does not log them, so a caller that rebuilds
    /// often can decide what is news.
    /// </summary>
    public static InventorySnapshot Build(IEnumerable<IKubernetesObject> objects) =>
        Build(objects, PolicyKinds.DefaultMeshRootNamespace);

    /// <inheritdoc cref="Build(IEnumerable{IKubernetesObject})"/>
    /// <param name="objects">The objects, in any order.</param>
    /// <param name="meshRootNamespace">Where policies without a selector apply mesh-wide (Istio's root namespace).</param>
    public static InventorySnapshot Build(IEnumerable<IKubernetesObject> objects, string meshRootNamespace)
    {
        ArgumentNullException.ThrowIfNull(objects);
        ArgumentException.ThrowIfNullOrEmpty(meshRootNamespace);

        // A build from scratch is the incremental state fed every object once: one code path, and the state
        // resolves duplicates and shared addresses by input order (the first wins).
        var state = new InventoryState(meshRootNamespace);
        var id = 0;
        foreach (var obj in objects)
        {
            state.Upsert(id++.ToString(CultureInfo.InvariantCulture), obj);
        }

        return state.Snapshot();
    }

    /// <summary>An object's namespace ("default" when it has none, as kubectl prints for the current one) and name; false with a warning when it has no name.</summary>
    internal static bool TryName(V1ObjectMeta? metadata, string kind, out string ns, out string name, out string warning)
    {
        ns = string.IsNullOrEmpty(metadata?.NamespaceProperty) ? "default" : metadata.NamespaceProperty;
        name = metadata?.Name ?? "";
        warning = name.Length == 0 ? $"{kind} without metadata.name in namespace {ns} skipped" : "";
        return name.Length > 0;
    }

    internal static string Protocol(string? protocol) =>
        string.IsNullOrEmpty(protocol) ? "TCP" : protocol.ToUpperInvariant();

    internal static bool IsPort(int port) => port is > 0 and <= 65535;

    /// <summary>
    /// The node's addresses as the pod reports them (status.hostIPs, or status.hostIP): the agent never
    /// connects to its own ports on a node address. One that does not parse is left out.
    /// </summary>
    internal static ImmutableArray<IPAddress> HostAddresses(V1Pod pod)
    {
        var texts = pod.Status?.HostIPs is { Count: > 0 } hostIps ? hostIps.Select(h => h?.Ip) : [pod.Status?.HostIP];
        var addresses = ImmutableArray.CreateBuilder<IPAddress>();
        foreach (var text in texts)
        {
            if (TryParseAddress(text, out var address) && !addresses.Contains(address))
            {
                addresses.Add(address);
            }
        }

        return addresses.ToImmutable();
    }

    /// <summary>
    /// Parses an address the way Kubernetes validates one. IPAddress.TryParse alone accepts legacy IPv4 forms
    /// ("10.1" is 10.0.0.1, "010.0.0.1" is octal) that would silently route somewhere unintended.
    /// </summary>
    internal static bool TryParseAddress(string? text, [NotNullWhen(true)] out IPAddress? address)
    {
        if (!IPAddress.TryParse(text, out address)
            || address.Equals(IPAddress.Any) || address.Equals(IPAddress.IPv6Any)
            || (address.AddressFamily == AddressFamily.InterNetworkV6 && address.ScopeId != 0))
        {
            address = null;
            return false;
        }

        if (address.AddressFamily == AddressFamily.InterNetwork && address.ToString() != text)
        {
            address = null;
            return false;
        }

        return address.AddressFamily is AddressFamily.InterNetwork or AddressFamily.InterNetworkV6;
    }

    internal static string Describe(IKubernetesObject obj)
    {
        var kind = string.IsNullOrEmpty(obj.Kind) ? obj.GetType().Name : obj.Kind;
        return obj is IMetadata<V1ObjectMeta> { Metadata: { } metadata }
            ? $"{kind} {metadata.NamespaceProperty ?? "-"}/{metadata.Name}"
            : kind;
    }
}
