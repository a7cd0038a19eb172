using System.Net.Security;
using System.Security.Cryptography.X509Certificates;

namespace Weft.Identity;

/// <summary>
/// An X.509-SVID: the leaf (with its in-memory private key), the intermediates to present after it,
/// and the TLS certificate context built from both so a handshake sends the whole chain.
/// </summary>
internal sealed class Svid
{
    private readonly Lazy<SslStreamCertificateContext> _context;

    internal Svid(SpiffeId id, X509Certificate2 certificate, X509Certificate2Collection intermediates, DateTimeOffset issuedAt, string authorityFingerprint)
    {
        Id = id;
        Certificate = certificate;
        Intermediates = intermediates;
        IssuedAt = issuedAt;
        NotBefore = new DateTimeOffset(certificate.NotBefore.ToUniversalTime(), TimeSpan.Zero);
        NotAfter = new DateTimeOffset(certificate.NotAfter.ToUniversalTime(), TimeSpan.Zero);
        RenewAt = issuedAt + (NotAfter - issuedAt) / 2;
        AuthorityFingerprint = authorityFingerprint;
        // offline: everything needed is given; never fetch AIA intermediates from the network.
        _context = new Lazy<SslStreamCertificateContext>(() => SslStreamCertificateContext.Create(Certificate, Intermediates, offline: true));
    }

    public SpiffeId Id { get; }

    /// <summary>The leaf, with its private key (never written anywhere).</summary>
    public X509Certificate2 Certificate { get; }

    /// <summary>Intermediates presented after the leaf, nearest first; empty when a root signs directly.</summary>
    public X509Certificate2Collection Intermediates { get; }

    public DateTimeOffset IssuedAt { get; }

    public DateTimeOffset NotBefore { get; }

    public DateTimeOffset NotAfter { get; }

    /// <summary>Half way from issuance to expiry: from then on the holder asks for a new one.</summary>
    public DateTimeOffset RenewAt { get; }

    /// <summary>Fingerprint of the CA that issued it; a different current CA means re-issue.</summary>
    public string AuthorityFingerprint { get; }

    /// <summary>SHA-1 thumbprint of the trust-bundle root the certificate chains to (CA service only; null when signed locally).</summary>
    public string? RootThumbprint { get; init; }

    /// <summary>For <c>ServerCertificateContext</c> / <c>ClientCertificateContext</c>: sends leaf and intermediates.</summary>
    public SslStreamCertificateContext Context => _context.Value;

    /// <summary>Leaf then intermediates, PEM, for an admin view or for a non-.NET peer in tests.</summary>
    public string ChainPem() =>
        string.Concat(new[] { Certificate }.Concat(Intermediates).Select(c => c.ExportCertificatePem() + "\n"));

    public override string ToString() => $"{Id} serial {Certificate.SerialNumber} valid {NotBefore:u}..{NotAfter:u}";
}
