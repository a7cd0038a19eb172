using Weft.Policy.Internal;

namespace Weft.Policy;

/// <summary>
/// Decides inbound connections at the destination agent with Istio's order, over the policies that apply to the
/// destination workload (mesh root namespace, then its own namespace; selectors matched against its labels):
/// <code>
///   any DENY policy matches ─────────► denied  "denied by ns/name"
///   no ALLOW policy applies ─────────► allowed "no authorization policy applies" / "no ALLOW policy applies"
///   some ALLOW policy matches ───────► allowed "allowed by ns/name"
///   otherwise ───────────────────────► denied  "no ALLOW policy matched (N apply)"
/// </code>
/// Knows nothing of the inventory: the caller names the destination by its namespace and labels (the inventory
/// does, in its own <c>Authorizer</c>). Reads only the policy set it is given, takes no lock, and allocates nothing per decision.
/// </summary>
internal static class PolicyDecisions
{
    private const string NoPolicy = "no authorization policy applies";
    private const string NoAllowPolicy = "no ALLOW policy applies";

    // Reasons for the common counts, made once, so even a denial allocates nothing.
    private static readonly string[] NoAllowMatched = [.. Enumerable.Range(0, 32).Select(NoAllowMatchedReason)];

    public static AuthorizationDecision Evaluate(
        PolicySet policies, string destinationNamespace, IReadOnlyDictionary<string, string> destinationLabels, ConnectionAttributes connection)
    {
        ArgumentNullException.ThrowIfNull(policies);
        ArgumentNullException.ThrowIfNull(destinationNamespace);
        ArgumentNullException.ThrowIfNull(destinationLabels);
        ArgumentNullException.ThrowIfNull(connection.SourceIp); // a missing address must not read as "::" and match IPv6 blocks
        var peer = new Peer(connection);
        var applying = 0;
        var allowing = 0;
        CompiledAuthorizationPolicy? allowedBy = null;

        var mesh = policies.MeshPolicies;
        var local = destinationNamespace != policies.MeshRootNamespace
            && policies.PoliciesByNamespace.TryGetValue(destinationNamespace, out var inNamespace) ? inNamespace : Array.Empty<CompiledAuthorizationPolicy>();

        // Every DENY is looked at before an ALLOW can decide; both arrays hold their DENY policies first.
        for (var pass = 0; pass < 2; pass++)
        {
            foreach (var policy in pass == 0 ? mesh : local)
            {
                if (!policy.Selects(destinationLabels))
                {
                    continue;
                }

                applying++;
                if (policy.Action == PolicyAction.Deny)
                {
                    if (policy.Matches(peer))
                    {
                        return new AuthorizationDecision(false, policy.Key, policy.MatchedReason);
                    }
                }
                else
                {
                    allowing++;
                    if (allowedBy is null && policy.Matches(peer))
                    {
                        allowedBy = policy;
                    }
                }
            }
        }

        if (allowedBy is not null)
        {
            return new AuthorizationDecision(true, allowedBy.Key, allowedBy.MatchedReason);
        }

        if (allowing == 0)
        {
            return new AuthorizationDecision(true, null, applying == 0 ? NoPolicy : NoAllowPolicy);
        }

        return new AuthorizationDecision(false, null, allowing < NoAllowMatched.Length ? NoAllowMatched[allowing] : NoAllowMatchedReason(allowing));
    }

    /// <summary>
    /// The workload's mode: the most specific PeerAuthentication that sets one wins (workload selector, then namespace,
    /// then mesh root namespace); UNSET inherits from the next wider scope; with none at all, PERMISSIVE, like Istio.
    /// </summary>
    public static MtlsMode ModeFor(PolicySet policies, string destinationNamespace, IReadOnlyDictionary<string, string> destinationLabels)
    {
        ArgumentNullException.ThrowIfNull(policies);
        ArgumentNullException.ThrowIfNull(destinationNamespace);
        ArgumentNullException.ThrowIfNull(destinationLabels);
        var inRoot = destinationNamespace == policies.MeshRootNamespace;

        // Workload level: the oldest selecting policy, its own namespace's before the mesh root's.
        var workload = !inRoot && policies.WorkloadModes.TryGetValue(destinationNamespace, out var own)
            ? FirstSelecting(own, destinationLabels)
            : null;
        workload ??= FirstSelecting(policies.MeshWorkloadModes, destinationLabels);
        if (workload?.Mode is { } workloadMode)
        {
            return workloadMode;
        }

        if (!inRoot && policies.NamespaceModes.TryGetValue(destinationNamespace, out var ns) && ns.Mode is { } namespaceMode)
        {
            return namespaceMode;
        }

        return policies.MeshMode?.Mode ?? MtlsMode.Permissive;
    }

    private static CompiledPeerAuthentication? FirstSelecting(CompiledPeerAuthentication[] candidates, IReadOnlyDictionary<string, string> labels)
    {
        foreach (var candidate in candidates)
        {
            if (candidate.Selects(labels))
            {
                return candidate;
            }
        }

        return null;
    }

    private static string NoAllowMatchedReason(int count) => $"no ALLOW policy matched ({count} apply)";
}
