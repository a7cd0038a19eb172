using Weft.Policy;

namespace Weft.Inventory;

/// <summary>
/// The proxy's view of policy: decides for a workload of a snapshot with the snapshot's own compiled policies.
/// It lives on the inventory side so that Policy never reads inventory types (Inventory → Policy, one way only);
/// the decision itself is <see cref="PolicyDecisions"/>, over the destination's namespace and labels.
/// </summary>
internal static class Authorizer
{
    /// <summary>Istio's order of DENY, then ALLOW, over the policies that apply to <paramref name="destination"/>; see <see cref="PolicyDecisions.Evaluate"/>.</summary>
    public static AuthorizationDecision Evaluate(InventorySnapshot snapshot, Workload destination, ConnectionAttributes connection)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        ArgumentNullException.ThrowIfNull(destination);
        return PolicyDecisions.Evaluate(snapshot.Policies, destination.Namespace, destination.Labels, connection);
    }

    /// <summary>The workload's mTLS mode; see <see cref="PolicyDecisions.ModeFor"/>.</summary>
    public static MtlsMode ModeFor(InventorySnapshot snapshot, Workload destination)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        ArgumentNullException.ThrowIfNull(destination);
        return PolicyDecisions.ModeFor(snapshot.Policies, destination.Namespace, destination.Labels);
    }
}
