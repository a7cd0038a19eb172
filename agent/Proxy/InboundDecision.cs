using System.Net;
using Weft.Identity;
using Weft.Inventory;
using Weft.Policy;

namespace Weft.Proxy;

/// <summary>
/// Whether a connection for a pod may reach its app, decided from the inventory alone (no socket), so
/// each check is testable as a table; Inbound.cs only carries the answer out. Null means admitted.
/// <code>
///  plaintext (15006): agent port → LOOP; STRICT mTLS → DENY; the pod's policies → DENY
///  CONNECT (15008):   authority not this pod → CONNECT; agent port → LOOP; the pod's policies → DENY
/// </code>
/// </summary>
internal static class InboundDecision
{
    public static ProxyError? Plaintext(InventorySnapshot snapshot, LocalPod pod, IPEndPoint source, IPEndPoint original, SelfTarget selfTarget)
    {
        // A connection straight to one of the agent's ports in the pod (sk_lookup lets the tunnel port
        // through; the rest arrive here) must not be delivered to that port: it would come back here.
        if (selfTarget.IsAgentPort(original.Port, out var agentPort))
        {
            return new ProxyError(ProxyErrorKind.Loop, SelfTarget.Reason(original, agentPort));
        }

        var self = pod.Ipv4 ?? pod.Ipv6;
        if (self is not null && snapshot.TryGetWorkload(self, out var workload) && Authorizer.ModeFor(snapshot, workload) == MtlsMode.Strict)
        {
            return new ProxyError(ProxyErrorKind.Denied, "plaintext refused: mTLS mode is STRICT");
        }

        return Authorize(snapshot, pod, ConnectionAttributes.Plaintext(source.Address, original.Port));
    }

    /// <param name="target">The CONNECT authority as an address and port; null when it is not one.</param>
    public static ProxyError? Connect(InventorySnapshot snapshot, LocalPod pod, string authority, IPEndPoint? target, SpiffeId peer,
        IPAddress tunnelSource, SelfTarget selfTarget)
    {
        if (target is null || target.Port == 0 || !(target.Address.Equals(pod.Ipv4) || target.Address.Equals(pod.Ipv6)))
        {
            return new ProxyError(ProxyErrorKind.ConnectFailure, $"CONNECT {authority} does not name this pod ({pod.Key})");
        }

        if (selfTarget.IsAgentPort(target.Port, out var agentPort))
        {
            return new ProxyError(ProxyErrorKind.Loop, SelfTarget.Reason(target, agentPort));
        }

        return Authorize(snapshot, pod, ConnectionAttributes.Mtls(peer.ToString(), tunnelSource, target.Port));
    }

    /// <summary>Applies the destination pod's policies to a connection: null when allowed, else the denial.</summary>
    public static ProxyError? Authorize(InventorySnapshot snapshot, LocalPod pod, ConnectionAttributes attributes)
    {
        var self = pod.Ipv4 ?? pod.Ipv6;
        if (self is null || !snapshot.TryGetWorkload(self, out var workload))
        {
            return new ProxyError(ProxyErrorKind.Denied, $"{pod.Key} is no longer in the inventory");
        }

        var decision = Authorizer.Evaluate(snapshot, workload, attributes);
        return decision.Allowed ? null : new ProxyError(ProxyErrorKind.Denied, decision.Reason);
    }
}
