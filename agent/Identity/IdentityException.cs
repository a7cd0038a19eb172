namespace Weft.Identity;

/// <summary>An identity operation refused or failed; the message names the cause and, where there is one, the fix.</summary>
internal sealed class IdentityException : Exception
{
    public IdentityException(string message)
        : base(message)
    {
    }

    public IdentityException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>The workload has no certificate yet because the CA service has not issued one in time (not a refusal by this node).</summary>
    public bool CertificateUnavailable { get; init; }
}
