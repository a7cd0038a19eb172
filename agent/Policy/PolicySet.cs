using System.Collections.Frozen;
using System.Collections.Immutable;
using Weft.Policy.Internal;

namespace Weft.Policy;

/// <summary>
/// The compiled AuthorizationPolicies and PeerAuthentications of one inventory snapshot, indexed by the scope they
/// apply to, so deciding a connection reads at most two short arrays:
/// <code>
///   mesh root namespace ── policies for every workload (selector checked per workload)
///   namespace "demo"    ── policies for workloads in demo (namespace-wide, or by selector)
///   each array: DENY policies first, then ALLOW, by name
/// </code>
/// Built by <see cref="PolicyCompiler"/>; immutable, shared by every reader of the snapshot.
/// </summary>
internal sealed class PolicySet
{
    public static PolicySet Empty { get; } = new(
        PolicyKinds.DefaultMeshRootNamespace, [], FrozenDictionary<string, CompiledAuthorizationPolicy[]>.Empty,
        null, FrozenDictionary<string, CompiledPeerAuthentication>.Empty, [], FrozenDictionary<string, CompiledPeerAuthentication[]>.Empty);

    internal PolicySet(
        string meshRootNamespace,
        CompiledAuthorizationPolicy[] meshPolicies,
        FrozenDictionary<string, CompiledAuthorizationPolicy[]> policiesByNamespace,
        CompiledPeerAuthentication? meshMode,
        FrozenDictionary<string, CompiledPeerAuthentication> namespaceModes,
        CompiledPeerAuthentication[] meshWorkloadModes,
        FrozenDictionary<string, CompiledPeerAuthentication[]> workloadModes)
    {
        MeshRootNamespace = meshRootNamespace;
        MeshPolicies = meshPolicies;
        PoliciesByNamespace = policiesByNamespace;
        MeshMode = meshMode;
        NamespaceModes = namespaceModes;
        MeshWorkloadModes = meshWorkloadModes;
        WorkloadModes = workloadModes;
        AuthorizationPolicies = [.. meshPolicies.Concat(policiesByNamespace.Values.SelectMany(p => p)).Select(p => p.Key).Order(StringComparer.Ordinal)];
        PeerAuthentications = [.. new[] { meshMode }.Concat(meshWorkloadModes).Concat(namespaceModes.Values).Concat(workloadModes.Values.SelectMany(p => p))
            .OfType<CompiledPeerAuthentication>().Select(p => $"{p.Namespace}/{p.Name}").Distinct().Order(StringComparer.Ordinal)];
    }

    /// <summary>Policies here without a selector apply to every workload in the mesh; with one, to matching workloads in every namespace.</summary>
    public string MeshRootNamespace { get; }

    /// <summary>"namespace/name" of every AuthorizationPolicy in force (invalid ones included: they fail closed).</summary>
    public ImmutableArray<string> AuthorizationPolicies { get; }

    /// <summary>"namespace/name" of every PeerAuthentication that can decide a mode.</summary>
    public ImmutableArray<string> PeerAuthentications { get; }

    internal CompiledAuthorizationPolicy[] MeshPolicies { get; }

    /// <summary>Policies of every namespace except the mesh root.</summary>
    internal FrozenDictionary<string, CompiledAuthorizationPolicy[]> PoliciesByNamespace { get; }

    /// <summary>The oldest selector-less PeerAuthentication in the mesh root namespace.</summary>
    internal CompiledPeerAuthentication? MeshMode { get; }

    /// <summary>Per namespace (mesh root excluded), its oldest selector-less PeerAuthentication.</summary>
    internal FrozenDictionary<string, CompiledPeerAuthentication> NamespaceModes { get; }

    /// <summary>PeerAuthentications with a selector in the mesh root namespace, oldest first: they select in every namespace.</summary>
    internal CompiledPeerAuthentication[] MeshWorkloadModes { get; }

    /// <summary>Per namespace (mesh root excluded), PeerAuthentications with a selector, oldest first.</summary>
    internal FrozenDictionary<string, CompiledPeerAuthentication[]> WorkloadModes { get; }
}
