namespace Weft.Gateway;

/// <summary>One status condition as Gateway API defines it (the time is added when it is written).</summary>
internal sealed record ConditionReport(string Type, bool Status, string Reason, string Message);

/// <summary>What the compiler found for one listener of a Gateway of our class.</summary>
internal sealed class ListenerReport(string name)
{
    public string Name { get; } = name;

    /// <summary>HTTPRoute when the listener serves HTTP or HTTPS; empty for a protocol the gateway does not serve.</summary>
    public List<string> SupportedKinds { get; } = [];

    public int AttachedRoutes { get; set; }

    public List<ConditionReport> Conditions { get; } = [];
}

/// <summary>
/// What the compiler found for one parentRef of an HTTPRoute that names a Gateway of our class; <paramref name="PartiallyInvalid"/>
/// only when the route is accepted and some of its rules were dropped (Gateway API sets that condition only True).
/// </summary>
internal sealed record RouteParentReport(ObjectReference ParentRef, ConditionReport Accepted, ConditionReport ResolvedRefs, ConditionReport? PartiallyInvalid = null);

/// <summary>
/// What <see cref="RouteCompiler"/> decided about each object it serves, in the terms a Gateway API controller
/// reports (conditions and reasons of the upstream API); <see cref="GatewayStatusWriter"/> turns it into status.
/// Keys are "namespace/name" (GatewayClass: the name).
/// </summary>
internal sealed class GatewayStatusReport
{
    public HashSet<string> AcceptedClasses { get; } = new(StringComparer.Ordinal);

    public Dictionary<string, List<ListenerReport>> Gateways { get; } = new(StringComparer.Ordinal);

    public Dictionary<string, List<RouteParentReport>> Routes { get; } = new(StringComparer.Ordinal);

    /// <summary>Ingresses of our class (their status.loadBalancer is ours to write).</summary>
    public HashSet<string> Ingresses { get; } = new(StringComparer.Ordinal);
}
