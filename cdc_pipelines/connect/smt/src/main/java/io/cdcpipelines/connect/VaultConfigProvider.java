package io.cdcpipelines.connect;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.HashMap;
import java.util.Iterator;
import java.util.Map;
import java.util.Set;
import org.apache.kafka.common.config.ConfigData;
import org.apache.kafka.common.config.ConfigException;
import org.apache.kafka.common.config.provider.ConfigProvider;

/**
 * Resolves {@code ${vault:<path>:<key>}} from a Vault (or OpenBao) KV secret.
 *
 * <p>Worker configuration ({@code config.providers.vault.param.*}):
 *
 * <ul>
 *   <li>{@code address}: the server, e.g. {@code http://127.0.0.1:8200} (default: the worker's
 *       {@code VAULT_ADDR});
 *   <li>{@code token.file}: a file holding the token, read at every lookup so a renewed token
 *       is used without a restart; or {@code token}; else the worker's {@code VAULT_TOKEN};
 *   <li>{@code timeout.ms}: per request (default 10000).
 * </ul>
 *
 * <p>The path is the API path ({@code secret/data/cdc/connect} on a KV version 2 mount) or the
 * {@code vault kv} form ({@code secret/cdc/connect}), which is mapped to the API path when the
 * mount is KV version 2. A missing secret, a missing key or a refused token fails the lookup
 * with the path and the key, never a value. Nothing is cached: every connector or task (re)start
 * reads the current version, which is how a rotated secret is picked up.
 */
public class VaultConfigProvider implements ConfigProvider {
  public static final String ADDRESS = "address";
  public static final String TOKEN = "token";
  public static final String TOKEN_FILE = "token.file";
  public static final String TIMEOUT_MS = "timeout.ms";

  private static final ObjectMapper JSON = new ObjectMapper();

  private String address;
  private String token;
  private Path tokenFile;
  private Duration timeout;
  private HttpClient http;

  @Override
  public void configure(Map<String, ?> configs) {
    address = text(configs.get(ADDRESS), System.getenv("VAULT_ADDR"));
    if (address == null) {
      throw new ConfigException(
          "the vault config provider needs config.providers.vault.param.address "
              + "(or VAULT_ADDR in the worker's environment)");
    }
    address = address.replaceAll("/+$", "");
    token = text(configs.get(TOKEN), null);
    String file = text(configs.get(TOKEN_FILE), null);
    tokenFile = file == null ? null : Path.of(file);
    timeout = Duration.ofMillis(Long.parseLong(text(configs.get(TIMEOUT_MS), "10000")));
    http = HttpClient.newBuilder().connectTimeout(timeout).build();
  }

  private static String text(Object value, String fallback) {
    if (value == null) {
      return fallback;
    }
    String text = value.toString().trim();
    return text.isEmpty() ? fallback : text;
  }

  private String currentToken() {
    if (tokenFile != null) {
      try {
        String text = Files.readString(tokenFile, StandardCharsets.UTF_8).trim();
        if (!text.isEmpty()) {
          return text;
        }
      } catch (IOException e) {
        throw new ConfigException(
            "the vault config provider cannot read its token file " + tokenFile + ": " + e);
      }
      throw new ConfigException("the vault config provider's token file " + tokenFile + " is empty");
    }
    String found = token != null ? token : text(System.getenv("VAULT_TOKEN"), null);
    if (found == null) {
      throw new ConfigException(
          "the vault config provider has no token: set config.providers.vault.param.token.file "
              + "(or .token, or VAULT_TOKEN in the worker's environment)");
    }
    return found;
  }

  @Override
  public ConfigData get(String path) {
    return new ConfigData(read(path));
  }

  @Override
  public ConfigData get(String path, Set<String> keys) {
    Map<String, String> secret = read(path);
    Map<String, String> wanted = new HashMap<>();
    for (String key : keys) {
      if (!secret.containsKey(key)) {
        throw new ConfigException(
            "Vault secret " + path + " at " + address + " has no key '" + key + "'");
      }
      wanted.put(key, secret.get(key));
    }
    return new ConfigData(wanted);
  }

  /** The secret's keys and values (KV version 1 or 2); values that are not text as JSON. */
  Map<String, String> read(String path) {
    if (path == null || path.isBlank()) {
      return Map.of();
    }
    String clean = path.replaceAll("^/+|/+$", "");
    String tokenNow = currentToken();
    String apiPath = apiPath(clean, tokenNow);
    HttpResponse<String> response = send(apiPath, tokenNow);
    if (response.statusCode() == 404) {
      throw new ConfigException("Vault at " + address + " has no secret at " + path);
    }
    if (response.statusCode() != 200) {
      throw new ConfigException(
          "Vault at " + address + " refused to read " + path + " (HTTP "
              + response.statusCode() + "): check the worker's token and its policy");
    }
    JsonNode data;
    try {
      data = JSON.readTree(response.body()).path("data");
    } catch (IOException e) {
      throw new ConfigException("Vault at " + address + " answered " + path + " with non-JSON");
    }
    if (data.path("data").isObject() && data.has("metadata")) {
      data = data.path("data"); // KV version 2 nests the secret beside its metadata
    }
    Map<String, String> values = new HashMap<>();
    for (Iterator<Map.Entry<String, JsonNode>> it = data.fields(); it.hasNext(); ) {
      Map.Entry<String, JsonNode> entry = it.next();
      JsonNode value = entry.getValue();
      values.put(entry.getKey(), value.isTextual() ? value.asText() : value.toString());
    }
    return values;
  }

  /**
   * {@code path} as the HTTP API reads it: on a KV version 2 mount {@code secret/cdc/connect}
   * is read at {@code secret/data/cdc/connect}. A path already naming {@code data/} under the
   * mount, another engine's path, or one whose mount cannot be looked up stays as given.
   */
  private String apiPath(String path, String tokenNow) {
    HttpResponse<String> response;
    try {
      response = send("sys/internal/ui/mounts/" + path, tokenNow);
    } catch (ConfigException e) {
      return path;
    }
    if (response.statusCode() != 200) {
      return path;
    }
    try {
      JsonNode mount = JSON.readTree(response.body()).path("data");
      String mountPath = mount.path("path").asText("");
      String version = mount.path("options").path("version").asText("1");
      if (!"kv".equals(mount.path("type").asText())
          || !"2".equals(version)
          || mountPath.isEmpty()
          || !path.startsWith(mountPath)) {
        return path;
      }
      String rest = path.substring(mountPath.length());
      return rest.startsWith("data/") ? path : mountPath + "data/" + rest;
    } catch (IOException e) {
      return path;
    }
  }

  private HttpResponse<String> send(String apiPath, String tokenNow) {
    StringBuilder encoded = new StringBuilder();
    for (String part : apiPath.split("/")) {
      if (encoded.length() > 0) {
        encoded.append('/');
      }
      encoded.append(URLEncoder.encode(part, StandardCharsets.UTF_8).replace("+", "%20"));
    }
    HttpRequest request =
        HttpRequest.newBuilder(URI.create(address + "/v1/" + encoded))
            .timeout(timeout)
            .header("X-Vault-Token", tokenNow)
            .GET()
            .build();
    try {
      return http.send(request, HttpResponse.BodyHandlers.ofString());
    } catch (IOException e) {
      throw new ConfigException("Vault at " + address + " cannot be reached to read " + apiPath
          + ": " + e.getMessage());
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new ConfigException("interrupted while reading " + apiPath + " from Vault");
    }
  }

  @Override
  public void close() {}
}
