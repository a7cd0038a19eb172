namespace Weft.Policy;

/// <summary>
/// The outcome for one connection, with what decided it: the policy ("namespace/name") when one did, and a sentence
/// for the flow record and the log ("denied by demo/deny-sleep", "no ALLOW policy matched (2 apply)").
/// </summary>
internal readonly record struct AuthorizationDecision(bool Allowed, string? Policy, string Reason)
{
    public override string ToString() => Reason;
}

/// <summary>Whether a workload accepts plaintext inbound. Istio's default, when no PeerAuthentication says otherwise, is PERMISSIVE.</summary>
internal enum MtlsMode
{
    /// <summary>mTLS and plaintext are both accepted; plaintext is recorded as such.</summary>
    Permissive,

    /// <summary>Only mTLS with a client certificate; plaintext inbound is refused.</summary>
    Strict,
}
