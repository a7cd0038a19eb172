namespace Weft.Identity;

/// <summary>
/// Where a node that holds no CA key gets its workloads' certificates (the CA service, <see cref="Weft.Ca.CaServiceClient"/>).
/// Keys are made by the source on this node and never leave it.
/// </summary>
internal interface ICertificateSource : IDisposable
{
    /// <summary>What <see cref="Svid.AuthorityFingerprint"/> says of certificates from a source (one issuer, whatever its key).</summary>
    public const string Fingerprint = "ca-service";

    /// <summary>Names the source in log lines and errors, e.g. "the CA service https://weft-ca:15012".</summary>
    string Description { get; }

    /// <summary>
    /// A certificate for <paramref name="id"/> valid for up to <paramref name="lifetime"/>, already checked with
    /// <paramref name="verifier"/>. Throws <see cref="IdentityException"/> naming the cause.
    /// </summary>
    Task<Svid> RequestAsync(SpiffeId id, TimeSpan lifetime, SpiffeVerifier verifier, TimeProvider time, CancellationToken cancellationToken);
}
