using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Weft.Identity;

/// <summary>Where the agent's CA lives on disk.</summary>
/// <param name="CertificatePath">PEM: the signing CA certificate first; any further certificates in the file are taken as its chain.</param>
/// <param name="KeyPath">PEM: the signing CA's private key (PKCS#8, SEC1 "EC PRIVATE KEY" or PKCS#1 "RSA PRIVATE KEY", unencrypted).</param>
/// <param name="TrustBundlePath">PEM: one or more root certificates peers may chain to (several during a CA rotation).</param>
/// <param name="ChainPath">Optional PEM: intermediates from the signing CA's issuer up towards the root.</param>
internal sealed record CaFiles(string CertificatePath, string KeyPath, string TrustBundlePath, string? ChainPath = null)
{
    public IEnumerable<string> All()
    {
        yield return CertificatePath;
        yield return KeyPath;
        yield return TrustBundlePath;
        if (ChainPath is not null)
        {
            yield return ChainPath;
        }
    }
}

/// <summary>
/// A signing CA (root or intermediate) with its private key, the intermediates between it and a root,
/// and the trust bundle. Immutable: a reload makes a new instance.
/// </summary>
internal sealed class CertificateAuthority
{
    private CertificateAuthority(X509Certificate2 signer, X509Certificate2Collection intermediates, X509Certificate2Collection roots, string fingerprint)
    {
        Signer = signer;
        Intermediates = intermediates;
        TrustBundle = roots;
        Fingerprint = fingerprint;
    }

    /// <summary>The signing CA certificate, with its private key.</summary>
    public X509Certificate2 Signer { get; }

    /// <summary>What a leaf must present after itself to reach a root: the signer when it is not self-signed, then its chain. Never roots.</summary>
    public X509Certificate2Collection Intermediates { get; }

    /// <summary>The roots peers' certificates may chain to.</summary>
    public X509Certificate2Collection TrustBundle { get; }

    /// <summary>SHA-256 over the file contents this instance came from; equal contents, equal fingerprint.</summary>
    public string Fingerprint { get; }

    /// <summary>Loads and checks the CA. Throws <see cref="IdentityException"/> naming the file and the problem.</summary>
    public static CertificateAuthority Load(CaFiles files, TimeProvider? time = null)
    {
        var contents = ReadAll(files);
        return FromPem(contents[0], contents[1], contents[2], contents[3], HashOf(contents), files, time ?? TimeProvider.System);
    }

    /// <summary>The SHA-256 fingerprint <see cref="Load"/> would give, without parsing; null when a file is missing.</summary>
    public static string? FingerprintOf(CaFiles files)
    {
        try
        {
            return HashOf(ReadAll(files));
        }
        catch (IdentityException)
        {
            return null;
        }
    }

    /// <summary>Builds a CA from PEM text already in memory (tests, or a CA handed over by another component).</summary>
    public static CertificateAuthority FromPem(string certificatePem, string keyPem, string trustBundlePem, string? chainPem = null, TimeProvider? time = null) =>
        FromPem(certificatePem, keyPem, trustBundlePem, chainPem ?? "", HashOf([certificatePem, keyPem, trustBundlePem, chainPem ?? ""]), null, time ?? TimeProvider.System);

    private static string[] ReadAll(CaFiles files)
    {
        string Read(string? path, string what)
        {
            if (path is null)
            {
                return "";
            }
            try
            {
                return File.ReadAllText(path);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new IdentityException($"cannot read the {what} {path}: {e.Message}", e);
            }
        }

        return
        [
            Read(files.CertificatePath, "CA certificate"),
            Read(files.KeyPath, "CA private key"),
            Read(files.TrustBundlePath, "trust bundle"),
            Read(files.ChainPath, "CA chain"),
        ];
    }

    private static string HashOf(string[] contents)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var text in contents)
        {
            hash.AppendData(System.Text.Encoding.UTF8.GetBytes(text));
            hash.AppendData([0]);
        }
        return Convert.ToHexString(hash.GetHashAndReset());
    }

    private static CertificateAuthority FromPem(string certificatePem, string keyPem, string bundlePem, string chainPem, string fingerprint, CaFiles? files, TimeProvider time)
    {
        string Name(Func<CaFiles, string?> pick, string what) => files is null ? what : $"{what} {pick(files)}";

        var certificates = ParseCertificates(certificatePem, Name(f => f.CertificatePath, "CA certificate"));
        var signerPublic = certificates[0];
        var chain = ParseCertificates(chainPem, Name(f => f.ChainPath, "CA chain"), allowEmpty: true);
        var roots = ParseCertificates(bundlePem, Name(f => f.TrustBundlePath, "trust bundle"));
        var certificateName = Name(f => f.CertificatePath, "CA certificate");

        CheckIsCa(signerPublic, certificateName);
        var now = time.GetUtcNow().UtcDateTime;
        if (signerPublic.NotAfter.ToUniversalTime() <= now)
        {
            throw new IdentityException($"{certificateName} ({signerPublic.Subject}) expired at {signerPublic.NotAfter.ToUniversalTime():u}");
        }
        var signer = AttachKey(signerPublic, keyPem, Name(f => f.KeyPath, "CA private key"), certificateName);

        var intermediates = new X509Certificate2Collection();
        foreach (var c in certificates.Skip(1).Concat(chain))
        {
            if (!IsSelfSigned(c))
            {
                intermediates.Add(c);
            }
        }
        if (!IsSelfSigned(signer))
        {
            intermediates.Insert(0, signerPublic);
        }

        var bundle = new X509Certificate2Collection();
        foreach (var root in roots)
        {
            CheckIsCa(root, $"{Name(f => f.TrustBundlePath, "trust bundle")} entry ({root.Subject})");
            bundle.Add(root);
        }
        CheckChainsToBundle(signerPublic, intermediates, bundle, certificateName, now);
        return new CertificateAuthority(signer, intermediates, bundle, fingerprint);
    }

    private static X509Certificate2Collection ParseCertificates(string pem, string name, bool allowEmpty = false)
    {
        var collection = new X509Certificate2Collection();
        if (!pem.Contains("-----BEGIN CERTIFICATE-----", StringComparison.Ordinal))
        {
            if (allowEmpty && string.IsNullOrWhiteSpace(pem))
            {
                return collection;
            }
            throw new IdentityException($"{name} holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
        }
        try
        {
            collection.ImportFromPem(pem);
        }
        catch (CryptographicException e)
        {
            throw new IdentityException($"{name} is not a valid PEM certificate: {e.Message}", e);
        }
        return collection;
    }

    private static void CheckIsCa(X509Certificate2 certificate, string name)
    {
        var constraints = certificate.Extensions.OfType<X509BasicConstraintsExtension>().FirstOrDefault();
        if (constraints is null || !constraints.CertificateAuthority)
        {
            throw new IdentityException($"{name} ({certificate.Subject}) is not a CA certificate: basic constraints must say cA=true");
        }
        // RFC 5280 4.2.1.3: without a key usage extension every use is allowed; with one, keyCertSign must be in it.
        var usage = certificate.Extensions.OfType<X509KeyUsageExtension>().FirstOrDefault();
        if (usage is not null && !usage.KeyUsages.HasFlag(X509KeyUsageFlags.KeyCertSign))
        {
            throw new IdentityException($"{name} ({certificate.Subject}) may not sign certificates: its key usage lacks keyCertSign");
        }
    }

    private static X509Certificate2 AttachKey(X509Certificate2 certificate, string keyPem, string keyName, string certificateName)
    {
        if (!keyPem.Contains("PRIVATE KEY-----", StringComparison.Ordinal))
        {
            throw new IdentityException($"{keyName} holds no PEM private key");
        }
        if (keyPem.Contains("ENCRYPTED PRIVATE KEY", StringComparison.Ordinal))
        {
            throw new IdentityException($"{keyName} is encrypted; give the agent an unencrypted key (mounted from a Secret)");
        }
        if (certificate.GetECDsaPublicKey() is { } ecPublic)
        {
            ecPublic.Dispose();
            using var key = ECDsa.Create();
            Import(key, "ECDSA");
            return Attach(() => certificate.CopyWithPrivateKey(key));
        }
        if (certificate.GetRSAPublicKey() is { } rsaPublic)
        {
            rsaPublic.Dispose();
            using var key = RSA.Create();
            Import(key, "RSA");
            return Attach(() => certificate.CopyWithPrivateKey(key));
        }
        throw new IdentityException($"{certificateName} has a {certificate.PublicKey.Oid.FriendlyName ?? certificate.PublicKey.Oid.Value} key; only ECDSA and RSA CAs are supported");

        void Import(AsymmetricAlgorithm key, string algorithm)
        {
            try
            {
                key.ImportFromPem(keyPem);
            }
            catch (Exception e) when (e is ArgumentException or CryptographicException)
            {
                throw new IdentityException($"{keyName} is not an {algorithm} private key, but {certificateName} ({certificate.Subject}) has an {algorithm} public key: {e.Message}", e);
            }
        }

        X509Certificate2 Attach(Func<X509Certificate2> copy)
        {
            try
            {
                return copy();
            }
            catch (Exception e) when (e is ArgumentException or CryptographicException)
            {
                throw new IdentityException($"{keyName} does not belong to {certificateName} ({certificate.Subject}): {e.Message}", e);
            }
        }
    }

    private static void CheckChainsToBundle(X509Certificate2 signer, X509Certificate2Collection intermediates, X509Certificate2Collection roots, string name, DateTime now)
    {
        // A self-signed signer is trusted when it is itself in the bundle; a chain build could pick another root
        // of the same name first (a rotation's new root often keeps the old one's subject).
        if (IsSelfSigned(signer))
        {
            if (roots.Any(r => r.RawData.AsSpan().SequenceEqual(signer.RawData)))
            {
                return;
            }

            throw new IdentityException($"{name} ({signer.Subject}) does not chain to a root in the trust bundle: it is a root itself ({signer.Thumbprint}); add it to the bundle first");
        }

        using var chain = Weft.Identity.TrustBundle.ChainTo(roots, intermediates);
        chain.ChainPolicy.VerificationTime = now;
        if (!chain.Build(signer))
        {
            var status = string.Join(", ", chain.ChainStatus.Select(s => s.Status.ToString()).Distinct());
            throw new IdentityException($"{name} ({signer.Subject}) does not chain to a root in the trust bundle ({status}); " +
                "put its root in the bundle and any intermediates in the chain file");
        }
    }

    internal static bool IsSelfSigned(X509Certificate2 certificate) =>
        certificate.SubjectName.RawData.AsSpan().SequenceEqual(certificate.IssuerName.RawData);
}
