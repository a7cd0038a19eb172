using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Weft.Identity;

/// <summary>
/// Signs X.509-SVIDs with a <see cref="CertificateAuthority"/>: a fresh ECDSA P-256 key in memory,
/// exactly one URI SAN (the SPIFFE ID), cA=false and digitalSignature (both critical),
/// serverAuth+clientAuth, a random serial, NotBefore slightly in the past for clock skew, and
/// NotAfter never beyond the CA's own.
/// </summary>
internal sealed class SvidIssuer
{
    public static readonly TimeSpan DefaultLifetime = TimeSpan.FromHours(24);

    /// <summary>How far NotBefore is backdated, so a peer whose clock is a little behind accepts a fresh SVID.</summary>
    public static readonly TimeSpan Backdate = TimeSpan.FromMinutes(5);

    private static readonly Oid ServerAuth = new("1.3.6.1.5.5.7.3.1");
    private static readonly Oid ClientAuth = new("1.3.6.1.5.5.7.3.2");

    private readonly TimeProvider _time;

    public SvidIssuer(TimeSpan? lifetime = null, TimeProvider? time = null)
    {
        Lifetime = lifetime ?? DefaultLifetime;
        if (Lifetime <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(lifetime), "SVID lifetime must be positive");
        }
        _time = time ?? TimeProvider.System;
    }

    public TimeSpan Lifetime { get; }

    public Svid Issue(CertificateAuthority authority, SpiffeId id)
    {
        var now = _time.GetUtcNow();
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var signed = Sign(authority, id, PublicKey.CreateFromSubjectPublicKeyInfo(key.ExportSubjectPublicKeyInfo(), out _), Lifetime);
        var leaf = signed.CopyWithPrivateKey(key);
        return new Svid(id, leaf, authority.Intermediates, now, authority.Fingerprint);
    }

    /// <summary>
    /// Signs an SVID for a key held elsewhere (a node's certificate signing request): the same extensions as
    /// <see cref="Issue"/>, valid for <paramref name="lifetime"/> from now and never beyond the CA.
    /// </summary>
    public X509Certificate2 Sign(CertificateAuthority authority, SpiffeId id, PublicKey subjectKey, TimeSpan lifetime)
    {
        var now = _time.GetUtcNow();
        var caNotBefore = new DateTimeOffset(authority.Signer.NotBefore.ToUniversalTime(), TimeSpan.Zero);
        var caNotAfter = new DateTimeOffset(authority.Signer.NotAfter.ToUniversalTime(), TimeSpan.Zero);
        if (caNotAfter <= now)
        {
            throw new IdentityException($"cannot issue {id}: the CA certificate ({authority.Signer.Subject}) expired at {caNotAfter:u}");
        }
        var notBefore = Max(now - Backdate, caNotBefore);
        var notAfter = Min(now + lifetime, caNotAfter);
        // X.509 validity has one-second resolution; keep what we compute equal to what the certificate says.
        notBefore = Truncate(notBefore);
        notAfter = Truncate(notAfter);

        using var signer = IssuerKey(authority.Signer, out var generator, out var hash);
        // SPIFFE leaves need no subject; RFC 5280 then wants the SAN extension critical.
        var request = new CertificateRequest(new X500DistinguishedName(""), subjectKey, hash);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, critical: true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, critical: true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(new OidCollection { ServerAuth, ClientAuth }, critical: false));
        var san = new SubjectAlternativeNameBuilder();
        san.AddUri(id.ToUri());
        request.CertificateExtensions.Add(san.Build(critical: true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, critical: false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(authority.Signer, true, false));

        return request.Create(authority.Signer.SubjectName, generator, notBefore, notAfter, RandomSerial());
    }

    /// <summary>The issuer's private key (caller disposes), a generator signing with it, and the hash that suits its size.</summary>
    internal static AsymmetricAlgorithm IssuerKey(X509Certificate2 issuer, out X509SignatureGenerator generator, out HashAlgorithmName hash)
    {
        if (issuer.GetECDsaPrivateKey() is { } ec)
        {
            hash = ec.KeySize switch
            {
                > 384 => HashAlgorithmName.SHA512,
                > 256 => HashAlgorithmName.SHA384,
                _ => HashAlgorithmName.SHA256,
            };
            generator = X509SignatureGenerator.CreateForECDsa(ec);
            return ec;
        }
        if (issuer.GetRSAPrivateKey() is { } rsa)
        {
            hash = HashAlgorithmName.SHA256;
            generator = X509SignatureGenerator.CreateForRSA(rsa, RSASignaturePadding.Pkcs1);
            return rsa;
        }
        throw new IdentityException($"the CA certificate ({issuer.Subject}) has no usable ECDSA or RSA private key");
    }

    internal static byte[] RandomSerial()
    {
        // 128 random bits, high bit clear so the DER INTEGER stays positive, never zero.
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] = (byte)((serial[0] & 0x7F) | 0x01);
        return serial;
    }

    private static DateTimeOffset Truncate(DateTimeOffset t) => new(t.UtcTicks - (t.UtcTicks % TimeSpan.TicksPerSecond), TimeSpan.Zero);

    private static DateTimeOffset Max(DateTimeOffset a, DateTimeOffset b) => a > b ? a : b;

    private static DateTimeOffset Min(DateTimeOffset a, DateTimeOffset b) => a < b ? a : b;
}
