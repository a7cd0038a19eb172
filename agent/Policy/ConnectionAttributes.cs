using System.Net;

namespace Weft.Policy;

/// <summary>
/// What the destination agent knows about an inbound connection when it authorizes it.
/// </summary>
/// <param name="SourcePrincipal">
/// The verified peer identity: a SPIFFE ID ("spiffe://cluster.local/ns/demo/sa/a") or the same without the scheme, as
/// Istio policies write principals. Null for plaintext: then no principal or namespace can match (Istio's mTLS-only fields).
/// </param>
/// <param name="SourceNamespace">The peer's namespace; null to take it from the principal's "/ns/&lt;namespace&gt;/" segment.</param>
/// <param name="SourceIp">The connection's source address (IPv4-mapped IPv6 matches IPv4 blocks).</param>
/// <param name="DestinationPort">The port the client asked for on the workload (the original destination), not 15008.</param>
public readonly record struct ConnectionAttributes(string? SourcePrincipal, string? SourceNamespace, IPAddress SourceIp, int DestinationPort)
{
    /// <summary>A connection that arrived over mTLS with the peer's SPIFFE ID; the namespace comes from the ID.</summary>
    public static ConnectionAttributes Mtls(string spiffeId, IPAddress sourceIp, int destinationPort)
    {
        ArgumentException.ThrowIfNullOrEmpty(spiffeId);
        return new(spiffeId, null, sourceIp, destinationPort);
    }

    /// <summary>A plaintext connection: no identity.</summary>
    public static ConnectionAttributes Plaintext(IPAddress sourceIp, int destinationPort) => new(null, null, sourceIp, destinationPort);

    public bool IsMtls => !string.IsNullOrEmpty(SourcePrincipal);
}
