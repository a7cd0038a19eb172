using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using k8s;
using k8s.Exceptions;
using k8s.KubeConfigModels;
using Weft.Inventory;

namespace Weft.Tests.Inventory;

/// <summary>Kubeconfig files read without KubernetesYaml (<see cref="KubeconfigFile"/>): the same model, and the client configuration KubernetesClient builds from it.</summary>
public sealed class KubeconfigFileTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("weft-kubeconfig-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private string Write(string yaml, string name = "config")
    {
        var path = Path.Combine(_directory, name);
        File.WriteAllText(path, yaml);
        return path;
    }

    private static string TwoContexts => """
        apiVersion: v1
        kind: Config
        preferences: {}
        clusters:
        - name: first
          cluster: {server: "https://10.0.0.1:6443", insecure-skip-tls-verify: true}
        - name: second
          cluster:
            server: http://127.0.0.1:8081
            tls-server-name: api.example
        users:
        - name: alice
          user: {token: alice-token}
        - name: bob
          user: {username: bob, password: 1234}
        contexts:
        - name: one
          context: {cluster: first, user: alice, namespace: team-a}
        - name: two
          context: {cluster: second, user: bob}
        current-context: two
        """;

    [Fact]
    public void TheCurrentContext_OrOneChosenExplicitly_PicksClusterUserAndNamespace()
    {
        var path = Write(TwoContexts);

        var current = KubeconfigFile.BuildConfig(path);
        Assert.Equal("two", current.CurrentContext);
        Assert.Equal("http://127.0.0.1:8081", current.Host);
        Assert.Equal(("bob", "1234"), (current.Username, current.Password));
        Assert.Equal("api.example", current.TlsServerName);

        var chosen = KubeconfigFile.BuildConfig(path, "one");
        Assert.Equal("one", chosen.CurrentContext);
        Assert.Equal("https://10.0.0.1:6443", chosen.Host);
        Assert.Equal("alice-token", chosen.AccessToken);
        Assert.True(chosen.SkipTlsVerify);
        Assert.Equal("team-a", chosen.Namespace);

        Assert.Throws<KubeConfigException>(() => KubeconfigFile.BuildConfig(path, "three"));
    }

    [Fact]
    public void TheModel_IsWhatKubernetesYamlReads()
    {
        var yaml = TwoContexts + """

            extensions:
            - name: ext
              extension: {a: 1, b: [x, y]}
            users2: ignored
            """;
        var path = Write(yaml);

        var expected = KubernetesYaml.Deserialize<K8SConfiguration>(yaml);
        var actual = KubeconfigFile.Load(path);

        Assert.Equal(Path.GetFullPath(path), actual.FileName);
        expected.FileName = actual.FileName;
        expected.Preferences = null; // preferences and extensions are left out: a client configuration does not read them
        expected.Extensions = null;
        Assert.Equal(KubernetesJson.Serialize(expected), KubernetesJson.Serialize(actual));
    }

    [Fact]
    public void ClientCertificates_InlineOrByARelativePath_AndTheCertificateAuthority_AreUsed()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=weft-test", key, HashAlgorithmName.SHA256);
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
        var certificatePem = certificate.ExportCertificatePem();
        var keyPem = key.ExportPkcs8PrivateKeyPem();
        Directory.CreateDirectory(Path.Combine(_directory, "certs"));
        File.WriteAllText(Path.Combine(_directory, "certs", "client.crt"), certificatePem);
        File.WriteAllText(Path.Combine(_directory, "certs", "client.key"), keyPem);
        static string Base64(string text) => Convert.ToBase64String(Encoding.UTF8.GetBytes(text));

        var path = Write($"""
            apiVersion: v1
            kind: Config
            clusters:
            - name: c
              cluster: {"{"}server: "https://127.0.0.1:6443", certificate-authority-data: {Base64(certificatePem)}{"}"}
            users:
            - name: inline
              user: {"{"}client-certificate-data: {Base64(certificatePem)}, client-key-data: {Base64(keyPem)}{"}"}
            - name: files
              user: {"{"}client-certificate: certs/client.crt, client-key: certs/client.key{"}"}
            contexts:
            - {"{"}name: inline, context: {"{"}cluster: c, user: inline{"}"}{"}"}
            - {"{"}name: files, context: {"{"}cluster: c, user: files{"}"}{"}"}
            current-context: inline
            """);

        var inline = KubeconfigFile.BuildConfig(path);
        Assert.Equal(Base64(certificatePem), inline.ClientCertificateData);
        Assert.Equal(certificate.Thumbprint, Assert.Single(inline.SslCaCerts!).Thumbprint);

        var files = KubeconfigFile.BuildConfig(path, "files");
        Assert.Equal(Path.Combine(_directory, "certs", "client.crt"), files.ClientCertificateFilePath);
        Assert.Equal(Path.Combine(_directory, "certs", "client.key"), files.ClientKeyFilePath);
    }

    [Fact]
    public void AnExecPlugin_IsRunForItsToken()
    {
        var plugin = Path.Combine(_directory, "token-plugin");
        File.WriteAllText(plugin, """
            #!/bin/sh
            printf '{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","status":{"token":"%s-%s"}}' "$WEFT_TOKEN" "$1"

            """);
        if (OperatingSystem.IsWindows())
        {
            return; // the plugin is a shell script; Weft runs on Linux
        }

        File.SetUnixFileMode(plugin, UnixFileMode.UserRead | UnixFileMode.UserExecute);
        var path = Write($$$"""
            apiVersion: v1
            kind: Config
            clusters:
            - {name: c, cluster: {server: "http://127.0.0.1:8081"}}
            users:
            - name: plugin
              user:
                exec:
                  apiVersion: client.authentication.k8s.io/v1beta1
                  command: {{{plugin}}}
                  args: [7]
                  env: [{name: WEFT_TOKEN, value: from-the-plugin}]
                  interactiveMode: Never
            contexts:
            - {name: c, context: {cluster: c, user: plugin}}
            current-context: c
            """);

        var config = KubeconfigFile.BuildConfig(path);

        Assert.Equal("from-the-plugin-7", config.AccessToken);
    }

    [Fact]
    public void UnreadableYaml_NamesTheFileLineAndColumn()
    {
        var path = Write("apiVersion: v1\nclusters:\n- name: c\n  cluster: {server: [1, 2]}\n");

        var failure = Assert.Throws<KubeConfigException>(() => KubeconfigFile.Load(path));

        Assert.Equal($"{Path.GetFullPath(path)}:4:21: a value of the wrong type: expected a string, found a list", failure.Message);
    }

    [Fact]
    public void TheFakeApiServersKubeconfig_Loads()
    {
        var path = Write("""
            apiVersion: v1
            kind: Config
            clusters:
            - name: fake
              cluster: {server: "http://127.0.0.1:12345"}
            users:
            - name: agent
              user: {token: "test-token"}
            contexts:
            - name: fake
              context: {cluster: fake, user: agent}
            current-context: fake
            """);

        var config = KubeconfigFile.BuildConfig(path);

        Assert.Equal(("http://127.0.0.1:12345", "test-token"), (config.Host, config.AccessToken));
    }
}
