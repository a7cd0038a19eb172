using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Weft.Identity;

namespace Weft.Ca;

/// <summary>Where <c>weft ca issue-node</c> wrote a node's credentials.</summary>
internal sealed record NodeCertificateFiles(string CertificatePath, string KeyPath);

/// <summary>
/// The certificates the CA makes for its own side of the protocol, beside workload SVIDs: a node's client
/// certificate (how a node authenticates in standalone mode) and the CA's TLS serving certificate.
/// Both are ECDSA P-256 leaves signed by the CA, cA=false, digitalSignature, with one purpose each.
/// </summary>
internal static class CaCertificates
{
    private static readonly Oid ServerAuth = new("1.3.6.1.5.5.7.3.1");
    private static readonly Oid ClientAuth = new("1.3.6.1.5.5.7.3.2");

    /// <summary>A client certificate for <paramref name="node"/>: URI SAN <c>spiffe://td/weft/node/NAME</c>, clientAuth only.</summary>
    public static X509Certificate2 IssueNodeCertificate(CertificateAuthority authority, NodeIdentity node, TimeSpan lifetime)
    {
        var san = new SubjectAlternativeNameBuilder();
        san.AddUri(node.ToUri());
        return IssueLeaf(authority, new X500DistinguishedName($"O=Weft, CN=weft node {node.NodeName}"), san, ClientAuth, lifetime);
    }

    /// <summary>Writes node.crt (the leaf then the CA's intermediates) and node.key (PKCS#8, mode 0600) into <paramref name="directory"/>.</summary>
    public static NodeCertificateFiles WriteNodeCertificate(CertificateAuthority authority, NodeIdentity node, string directory, TimeSpan lifetime)
    {
        Directory.CreateDirectory(directory);
        using var certificate = IssueNodeCertificate(authority, node, lifetime);
        var files = new NodeCertificateFiles(Path.Combine(directory, "node.crt"), Path.Combine(directory, "node.key"));
        var pem = new System.Text.StringBuilder(certificate.ExportCertificatePem()).Append('\n');
        foreach (var intermediate in authority.Intermediates)
        {
            pem.Append(intermediate.ExportCertificatePem()).Append('\n');
        }
        using var key = certificate.GetECDsaPrivateKey()!;
        // The key file is created private before the key is written into it.
        File.WriteAllText(files.KeyPath, "");
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(files.KeyPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }
        File.WriteAllText(files.KeyPath, key.ExportPkcs8PrivateKeyPem());
        File.WriteAllText(files.CertificatePath, pem.ToString());
        return files;
    }

    /// <summary>The CA's TLS serving certificate: serverAuth, the given DNS names and IP addresses as SANs.</summary>
    public static X509Certificate2 IssueServingCertificate(CertificateAuthority authority, IEnumerable<string> dnsNames, IEnumerable<IPAddress> addresses, TimeSpan lifetime)
    {
        var san = new SubjectAlternativeNameBuilder();
        foreach (var name in dnsNames)
        {
            san.AddDnsName(name);
        }
        foreach (var address in addresses)
        {
            san.AddIpAddress(address);
        }
        return IssueLeaf(authority, new X500DistinguishedName("O=Weft, CN=weft CA"), san, ServerAuth, lifetime);
    }

    private static X509Certificate2 IssueLeaf(CertificateAuthority authority, X500DistinguishedName subject, SubjectAlternativeNameBuilder san, Oid purpose, TimeSpan lifetime)
    {
        var now = DateTimeOffset.UtcNow;
        var caNotAfter = new DateTimeOffset(authority.Signer.NotAfter.ToUniversalTime(), TimeSpan.Zero);
        var notAfter = now + lifetime < caNotAfter ? now + lifetime : caNotAfter;
        using var signer = SvidIssuer.IssuerKey(authority.Signer, out var generator, out var hash);
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(subject, key, hash);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, critical: true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, critical: true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(new OidCollection { purpose }, critical: false));
        request.CertificateExtensions.Add(san.Build(critical: false));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, critical: false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(authority.Signer, true, false));
        using var signed = request.Create(authority.Signer.SubjectName, generator, now - SvidIssuer.Backdate, notAfter, SvidIssuer.RandomSerial());
        return signed.CopyWithPrivateKey(key);
    }
}
