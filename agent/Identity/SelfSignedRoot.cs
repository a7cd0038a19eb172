using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Weft.Identity;

/// <summary>
/// A new self-signed root CA written as PEM files: for trying Weft standalone, the demo and the tests.
/// Production clusters bring their own CA (or intermediate) instead.
/// </summary>
internal static class SelfSignedRoot
{
    /// <summary>Writes ca.crt, ca.key (PKCS#8, mode 0600) and bundle.crt into <paramref name="directory"/>.</summary>
    public static CaFiles Write(string directory, string trustDomain, TimeSpan? lifetime = null)
    {
        Directory.CreateDirectory(directory);
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"O=Weft, CN=Weft root CA for {trustDomain}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        var now = DateTimeOffset.UtcNow;
        using var certificate = request.CreateSelfSigned(now.AddMinutes(-5), now + (lifetime ?? TimeSpan.FromDays(365)));

        var files = new CaFiles(Path.Combine(directory, "ca.crt"), Path.Combine(directory, "ca.key"), Path.Combine(directory, "bundle.crt"));
        File.WriteAllText(files.CertificatePath, certificate.ExportCertificatePem());
        File.WriteAllText(files.TrustBundlePath, certificate.ExportCertificatePem());
        File.WriteAllText(files.KeyPath, key.ExportPkcs8PrivateKeyPem());
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(files.KeyPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }
        return files;
    }
}
